import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// A client for one registry host speaking the OCI distribution-spec
/// (pull, push, HEAD, range GETs, chunked uploads, cross-repository mounts),
/// with anonymous, Basic and Bearer-token authentication, per-request
/// timeouts and bounded retries with exponential backoff.
///
/// Thread-safe; it owns one `HTTPClient`, call `shutdown()` when done.
public final class RegistryClient: Sendable {
    /// Username and password for Basic auth or for fetching Bearer tokens.
    public struct Credentials: Sendable, Hashable {
        public var username: String
        public var password: String
        public init(username: String, password: String) {
            self.username = username
            self.password = password
        }

        /// `KANGAROO_REGISTRY_USER` / `KANGAROO_REGISTRY_PASSWORD`, when both are set.
        public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> Credentials? {
            guard let user = env["KANGAROO_REGISTRY_USER"], !user.isEmpty,
                  let password = env["KANGAROO_REGISTRY_PASSWORD"] else { return nil }
            return Credentials(username: user, password: password)
        }

        var basicHeader: String {
            "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
        }
    }

    /// The registry host as given (`127.0.0.1:5000`, `ghcr.io`).
    public let host: String
    /// `http` or `https`.
    public let scheme: String
    let baseURL: String
    /// The API root below `baseURL` (`/v2`, or a mirror's own path).
    let apiPath: String
    /// Headers sent with every request (a hosts.toml `[header]` table).
    let extraHeaders: [(String, String)]
    let credentials: Credentials?
    /// Deadline of one small request (manifests, HEAD, upload control).
    let timeout: TimeAmount
    /// Deadline of one blob transfer (GET or upload of blob data).
    let transferTimeout: TimeAmount
    /// Extra attempts after a failed one (5xx, 429, connection errors).
    let retries: Int
    /// First backoff delay; doubles each attempt, capped at 10 s.
    let backoff: Duration
    let logger: Logger
    let http: HTTPClient
    let auth = Mutex(AuthCache())

    /// - Parameters:
    ///   - host: registry host with optional port; `docker.io` is mapped to `registry-1.docker.io`.
    ///   - plainHTTP: use `http://`; defaults to true for 127.0.0.1, ::1 and localhost.
    ///   - credentials: defaults to `KANGAROO_REGISTRY_USER`/`KANGAROO_REGISTRY_PASSWORD`.
    ///   - timeout: deadline for each small request and connect/read idle timeout.
    ///   - transferTimeout: deadline for each blob download or upload request.
    ///   - retries: how many times a failed request is retried.
    ///   - apiPath: the API root (`/v2`; a mirror may have its own, hosts.toml's `override_path`).
    ///   - headers: sent with every request.
    ///   - tls: certificate checks for `https` (a CA file, or none at all).
    public init(host: String, plainHTTP: Bool? = nil, credentials: Credentials? = Credentials.fromEnvironment(),
                timeout: Duration = .seconds(30), transferTimeout: Duration = .seconds(3600),
                retries: Int = 3, backoff: Duration = .milliseconds(200),
                apiPath: String = "/v2", headers: [(String, String)] = [], tls: TLSOptions = TLSOptions(),
                logger: Logger = Logger(label: "kangaroo.registry")) {
        self.host = host
        let hostName = host.split(separator: ":").first.map(String.init) ?? host
        let local = ["127.0.0.1", "localhost", "[::1]"].contains(hostName) || host.hasPrefix("[::1]")
        self.scheme = (plainHTTP ?? local) ? "http" : "https"
        let apiHost = host == Reference.defaultHost ? "registry-1.docker.io" : host
        self.baseURL = "\(scheme)://\(apiHost)"
        self.apiPath = apiPath.hasSuffix("/") ? String(apiPath.dropLast()) : apiPath
        self.extraHeaders = headers
        self.credentials = credentials
        self.timeout = Self.timeAmount(timeout)
        self.transferTimeout = Self.timeAmount(transferTimeout)
        self.retries = max(0, retries)
        self.backoff = backoff
        self.logger = logger
        var config = HTTPClient.Configuration(
            redirectConfiguration: .follow(max: 5, allowCycles: false),
            timeout: .init(connect: self.timeout, read: self.timeout))
        config.httpVersion = .automatic
        if tls.skipVerify || !tls.caFiles.isEmpty {
            var tlsConfig = TLSConfiguration.makeClientConfiguration()
            if tls.skipVerify {
                tlsConfig.certificateVerification = .none
            } else {
                tlsConfig.additionalTrustRoots = tls.caFiles.map { .file($0) }
            }
            config.tlsConfiguration = tlsConfig
        }
        // Connection failures come back at once and are retried by `send`
        // with its own bounded backoff (AHC would otherwise keep retrying
        // until the connect timeout, for every attempt).
        config.connectionPool.retryConnectionEstablishment = false
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: config,
                               backgroundActivityLogger: logger)
    }

    /// Closes the HTTP client's connections. Call once, when done.
    public func shutdown() async {
        do { try await http.shutdown() } catch {
            logger.debug("registry client shutdown: \(error)")
        }
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        let (s, atto) = d.components
        return .nanoseconds(s * 1_000_000_000 + atto / 1_000_000_000)
    }

    func url(_ repository: String, _ tail: String) -> String {
        "\(baseURL)\(apiPath)/\(repository)/\(tail)"
    }

    /// Resolves a `Location` header (absolute or relative) against the registry.
    func resolveLocation(_ location: String) -> String {
        if location.hasPrefix("http://") || location.hasPrefix("https://") { return location }
        if location.hasPrefix("/") { return baseURL + location }
        return baseURL + "/" + location
    }

    static func appendingQuery(_ url: String, _ query: String) -> String {
        url + (url.contains("?") ? "&" : "?") + query
    }

    /// Certificate checks of an `https` registry.
    public struct TLSOptions: Sendable, Equatable {
        /// Skip the certificate chain and host name checks (hosts.toml `skip_verify`).
        public var skipVerify = false
        /// PEM files of extra CAs trusted besides the system's (hosts.toml `ca`).
        public var caFiles: [String] = []
        public init(skipVerify: Bool = false, caFiles: [String] = []) {
            self.skipVerify = skipVerify
            self.caFiles = caFiles
        }
    }

    static func pullScope(_ repository: String) -> String { "repository:\(repository):pull" }
    static func pushScope(_ repository: String) -> String { "repository:\(repository):pull,push" }
}
