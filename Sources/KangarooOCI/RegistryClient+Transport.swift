import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// One entry of a registry error body (distribution-spec, "Error Codes").
public struct RegistryErrorBody: Decodable, Sendable {
    public struct Entry: Decodable, Sendable {
        public var code: String?
        public var message: String?
    }
    public var errors: [Entry]?
}

extension RegistryClient {
    /// What a request sends: a factory so retries get a fresh body.
    struct Request: Sendable {
        var method: HTTPMethod
        var url: String
        var headers: HTTPHeaders = [:]
        var body: (@Sendable () -> HTTPClientRequest.Body?)? = nil
        /// Scope for Bearer tokens.
        var scope: String
        /// Human-readable operation for error messages.
        var operation: String
        /// Whether the request may be sent again after a failure.
        var idempotent = true
        /// Blob transfers use the long transfer deadline.
        var transfer = false
    }

    /// Sends `request`, handling authentication and retries. Returns the
    /// response for any status in `expect`; anything else becomes an
    /// `OCIError` naming the operation, URL, status and registry error.
    /// The caller must consume the returned body.
    func send(_ request: Request, expect: Set<UInt>) async throws(OCIError) -> HTTPClientResponse {
        var attempt = 0
        var authAttempts = 0
        while true {
            var r = HTTPClientRequest(url: request.url)
            r.method = request.method
            r.headers = request.headers
            for (name, value) in extraHeaders { r.headers.add(name: name, value: value) }
            if let authorization = cachedAuthorization(scope: request.scope) {
                r.headers.replaceOrAdd(name: "Authorization", value: authorization)
            }
            r.body = request.body?()
            let deadline = request.transfer ? transferTimeout : timeout
            let response: HTTPClientResponse
            do {
                response = try await http.execute(r, timeout: deadline, logger: logger)
            } catch {
                let mapped = Self.transportError(error, request)
                if request.idempotent, attempt < retries, !(error is CancellationError) {
                    attempt += 1
                    logger.debug("\(request.operation) \(request.method) \(request.url) failed (\(error)); retry \(attempt)/\(retries)")
                    try await sleepBackoff(attempt)
                    continue
                }
                throw mapped
            }
            let status = response.status.code
            if expect.contains(status) { return response }
            if status == 401, authAttempts < 2 {
                let challenge = response.headers.first(name: "WWW-Authenticate")
                await drain(response)
                authAttempts += 1
                let sentBasic = r.headers.first(name: "Authorization")?.hasPrefix("Basic ") ?? false
                if try await authenticate(challengeHeader: challenge, scope: request.scope,
                                          operation: request.operation, url: request.url, sentBasic: sentBasic) {
                    continue
                }
                throw failure(request, status: status, body: [])
            }
            if (status >= 500 || status == 429), request.idempotent, attempt < retries {
                await drain(response)
                attempt += 1
                logger.debug("\(request.operation) \(request.method) \(request.url): HTTP \(status); retry \(attempt)/\(retries)")
                try await sleepBackoff(attempt)
                continue
            }
            let body = (try? await response.body.collect(upTo: 64 * 1024)).map { Array($0.readableBytesView) } ?? []
            throw failure(request, status: status, body: body)
        }
    }

    func sleepBackoff(_ attempt: Int) async throws(OCIError) {
        var delay = backoff
        for _ in 1..<max(attempt, 1) { delay *= 2 }
        if delay > .seconds(10) { delay = .seconds(10) }
        do { try await Task.sleep(for: delay) } catch {
            throw OCIError(.network, "registry request cancelled")
        }
    }

    /// Reads and drops a response body we do not need.
    func drain(_ response: HTTPClientResponse) async {
        do {
            for try await _ in response.body {}
        } catch {}
    }

    static func transportError(_ error: any Error, _ request: Request) -> OCIError {
        let what = "\(request.operation): \(request.method) \(request.url)"
        if let e = error as? HTTPClientError {
            if e == .deadlineExceeded || e == .readTimeout || e == .connectTimeout || e == .writeTimeout {
                return OCIError(.timeout, "\(what) timed out", underlying: SendableErrorBox(error))
            }
        }
        return OCIError(.network, "\(what) failed: \(error)", underlying: SendableErrorBox(error))
    }

    func failure(_ request: Request, status: UInt, body: [UInt8]) -> OCIError {
        var detail = ""
        if let parsed = try? JSONDecoder().decode(RegistryErrorBody.self, from: Data(body)), let errors = parsed.errors, !errors.isEmpty {
            detail = ": " + errors.map { "\($0.code ?? "UNKNOWN"): \($0.message ?? "")" }.joined(separator: "; ")
        } else if !body.isEmpty {
            detail = ": " + String(decoding: body.prefix(300), as: UTF8.self)
        }
        let code: OCIError.Code
        var hint = ""
        switch status {
        case 401:
            code = .unauthorized
            hint = credentials == nil ? " (no credentials given; set KANGAROO_REGISTRY_USER and KANGAROO_REGISTRY_PASSWORD)"
                                      : " (the registry rejected the username or password)"
        case 403: code = .unauthorized
        case 404: code = .notFound
        case 429, 500...599: code = .unavailable
        default: code = .registry
        }
        return OCIError(code, "\(request.operation): \(request.method) \(request.url) returned HTTP \(status)\(detail)\(hint)")
    }
}
