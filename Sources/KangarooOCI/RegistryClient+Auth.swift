import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// Cached authorization: Basic for the host, Bearer tokens per scope.
struct AuthCache: Sendable {
    var basic = false
    var tokens: [String: String] = [:]
}

/// A parsed `WWW-Authenticate` challenge (RFC 7235): scheme and parameters.
public struct AuthChallenge: Sendable, Equatable {
    public var scheme: String
    public var parameters: [String: String]

    /// Parses `Bearer realm="...",service="...",scope="a:b:pull,push"` or `Basic realm="..."`.
    public static func parse(_ header: String) -> AuthChallenge? {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return nil }
        let schemeEnd = trimmed.firstIndex(of: " ") ?? trimmed.endIndex
        let scheme = String(trimmed[..<schemeEnd]).lowercased()
        var params: [String: String] = [:]
        var chars = Array(trimmed[schemeEnd...].unicodeScalars)
        var i = 0
        func skipSpace() { while i < chars.count, chars[i] == " " || chars[i] == "," || chars[i] == "\t" { i += 1 } }
        while i < chars.count {
            skipSpace()
            var key = ""
            while i < chars.count, chars[i] != "=", chars[i] != "," { key.unicodeScalars.append(chars[i]); i += 1 }
            guard i < chars.count, chars[i] == "=" else { break }
            i += 1
            var value = ""
            if i < chars.count, chars[i] == "\"" {
                i += 1
                while i < chars.count, chars[i] != "\"" {
                    if chars[i] == "\\", i + 1 < chars.count { i += 1 }
                    value.unicodeScalars.append(chars[i])
                    i += 1
                }
                i += 1
            } else {
                while i < chars.count, chars[i] != "," { value.unicodeScalars.append(chars[i]); i += 1 }
                value = value.trimmingCharacters(in: .whitespaces)
            }
            let k = key.trimmingCharacters(in: .whitespaces).lowercased()
            if !k.isEmpty { params[k] = value }
        }
        chars = []
        return AuthChallenge(scheme: scheme, parameters: params)
    }
}

extension RegistryClient {
    /// The Authorization header to send for `scope`, if any is known.
    func cachedAuthorization(scope: String) -> String? {
        let cache = auth.withLock { $0 }
        if let token = cache.tokens[scope] { return "Bearer \(token)" }
        if cache.basic, let credentials { return credentials.basicHeader }
        return nil
    }

    /// Reacts to a 401: fetches what the challenge asks for and caches it.
    /// Returns false when nothing new can be tried. `sentBasic` tells
    /// whether the rejected request already carried Basic credentials (a
    /// concurrent request may have been sent before another one learned
    /// that the registry wants them).
    func authenticate(challengeHeader: String?, scope: String, operation: String, url: String,
                      sentBasic: Bool = false) async throws(OCIError) -> Bool {
        guard let header = challengeHeader, let challenge = AuthChallenge.parse(header) else {
            return false
        }
        switch challenge.scheme {
        case "basic":
            guard credentials != nil else {
                throw OCIError(.unauthorized, "\(operation) \(url): the registry requires a username and password (set KANGAROO_REGISTRY_USER and KANGAROO_REGISTRY_PASSWORD)")
            }
            auth.withLock { $0.basic = true }
            return !sentBasic
        case "bearer":
            guard let realm = challenge.parameters["realm"], !realm.isEmpty else {
                throw OCIError(.unauthorized, "\(operation) \(url): Bearer challenge without a realm: \(header)")
            }
            let wanted = challenge.parameters["scope"] ?? scope
            let token = try await fetchToken(realm: realm, service: challenge.parameters["service"], scope: wanted)
            auth.withLock { $0.tokens[scope] = token }
            return true
        default:
            throw OCIError(.unauthorized, "\(operation) \(url): unsupported authentication scheme '\(challenge.scheme)'")
        }
    }

    /// GET realm?service=...&scope=... (with Basic credentials if given); returns the token.
    func fetchToken(realm: String, service: String?, scope: String) async throws(OCIError) -> String {
        var components = URLComponents(string: realm)
        var items = components?.queryItems ?? []
        if let service { items.append(URLQueryItem(name: "service", value: service)) }
        for s in scope.split(separator: " ") { items.append(URLQueryItem(name: "scope", value: String(s))) }
        components?.queryItems = items.isEmpty ? nil : items
        guard let tokenURL = components?.string else {
            throw OCIError(.unauthorized, "token realm '\(realm)' is not a valid URL")
        }
        var request = HTTPClientRequest(url: tokenURL)
        if let credentials { request.headers.add(name: "Authorization", value: credentials.basicHeader) }
        let response: HTTPClientResponse
        do { response = try await http.execute(request, timeout: timeout, logger: logger) } catch {
            throw OCIError(.network, "fetching a registry token from \(tokenURL) failed", underlying: SendableErrorBox(error))
        }
        let body = (try? await response.body.collect(upTo: 1 << 20)).map { Array($0.readableBytesView) } ?? []
        guard response.status == .ok else {
            let detail = String(decoding: body.prefix(512), as: UTF8.self)
            let hint = credentials == nil ? " (no credentials were given)" : " (check the username and password)"
            throw OCIError(.unauthorized, "token server \(tokenURL) refused access: HTTP \(response.status.code)\(hint) \(detail)")
        }
        struct TokenResponse: Decodable { var token: String?; var access_token: String? }
        let parsed = try CanonicalJSON.decode(TokenResponse.self, from: body, what: "token response from \(realm)")
        guard let token = parsed.token ?? parsed.access_token, !token.isEmpty else {
            throw OCIError(.unauthorized, "token server \(realm) returned no token")
        }
        return token
    }
}
