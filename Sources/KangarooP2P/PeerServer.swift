import Foundation
import KangarooChunks
import KangarooOCI
import Logging
import NIOHTTP1
import Synchronization

/// Serves the chunks of a node's verified cache to other nodes over HTTP
/// in the OCI blob URL form, so that any registry client can read them:
/// `GET /v2/<name>/blobs/<digest>` with `Range: bytes=A-B` answers 206 with
/// the bytes the registry would give for that range, when the range is made
/// of whole chunks this node holds (`CacheReader`), and 404 otherwise (the
/// client moves on to its next host). `GET /v2/` answers 200 (a ping).
///
/// Every request needs `Authorization: Bearer <cluster token>` (401
/// otherwise, with no challenge: there is nothing to log in to). Uploads are
/// capped in number (503 beyond `maxUploads`, the client goes elsewhere) and
/// in bandwidth (a token bucket shared by all uploads). Disk reads run on a
/// thread pool, never on the event loop.
public final class PeerServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// The cluster token; nil serves without authentication (tests, a
        /// trusted network: say so on the command line).
        public var token: String?
        public var maxUploads: Int = 16
        /// Upload bandwidth cap, bytes per second (0: none).
        public var maxUploadBytesPerSecond: UInt64 = 0

        public init(host: String, port: Int, token: String?) {
            self.host = host
            self.port = port
            self.token = token
        }
    }

    /// Counters (the node exports them).
    public struct Stats: Sendable, Codable, Equatable {
        public var requests: UInt64 = 0
        public var uploads: UInt64 = 0
        public var bytesUploaded: UInt64 = 0
        public var notHeld: UInt64 = 0
        public var unauthorized: UInt64 = 0
        public var busy: UInt64 = 0
    }

    let reader: CacheReader
    public let configuration: Configuration
    let logger: Logger
    let counters = Mutex(Stats())
    let token: ClusterToken?
    let http = Mutex<HTTPServer?>(nil)

    public init(reader: CacheReader, configuration: Configuration, logger: Logger) {
        self.reader = reader
        self.configuration = configuration
        self.logger = logger
        token = configuration.token.map(ClusterToken.init)
    }

    public func stats() -> Stats { counters.withLock { $0 } }

    /// Binds and starts serving; returns the bound port.
    public func start() async throws -> Int {
        let bucket = configuration.maxUploadBytesPerSecond > 0 ? UploadBucket(bytesPerSecond: configuration.maxUploadBytesPerSecond) : nil
        let server = HTTPServer(host: configuration.host, port: configuration.port, maxActive: configuration.maxUploads, bucket: bucket,
                                onBusy: { [self] in counters.withLock { $0.busy += 1 } },
                                respond: { [self] request in answer(request) })
        let port = try await server.start()
        http.withLock { $0 = server }
        logger.info("peer serving the chunk cache", metadata: ["cache": "\(reader.directory)",
                                                              "listen": "\(configuration.host):\(port)",
                                                              "auth": "\(token == nil ? "none" : "cluster token")"])
        return port
    }

    /// Stops accepting and closes the listener.
    public func stop() async {
        await http.withLock({ $0 })?.stop()
    }

    /// Answers one request (on a pool thread: it may read the disk).
    func answer(_ request: HTTPRequest) -> HTTPAnswer {
        counters.withLock { $0.requests += 1 }
        if let token, !token.admits(request.headers.first(name: "Authorization")) {
            counters.withLock { $0.unauthorized += 1 }
            logger.notice("peer request refused: no valid cluster token", metadata: ["uri": "\(request.uri)"])
            return .error(.unauthorized, "UNAUTHORIZED", "this peer serves members of its cluster only (Authorization: Bearer <cluster token>)")
        }
        guard request.method == .GET || request.method == .HEAD else { return .error(.methodNotAllowed, "UNSUPPORTED", "only GET and HEAD") }
        let path = request.path
        if path == "/v2/" || path == "/v2" { return HTTPAnswer(status: .ok, headers: [("Content-Type", "application/json")], body: Array("{}".utf8)) }
        // /v2/<name>/blobs/<digest>
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count >= 4, parts[0] == "v2", parts[parts.count - 2] == "blobs" else {
            return .error(.notFound, "NAME_UNKNOWN", "this peer serves /v2/<name>/blobs/<digest> only")
        }
        let digest: KangarooOCI.Digest
        do { digest = try KangarooOCI.Digest(parsing: String(parts[parts.count - 1])) } catch {
            return .error(.badRequest, "DIGEST_INVALID", "\(error)")
        }
        guard let rangeHeader = request.headers.first(name: "Range") else {
            counters.withLock { $0.notHeld += 1 }
            return .error(.notFound, "BLOB_UNKNOWN", "this peer serves byte ranges of blobs: ask with a Range header")
        }
        guard let range = Self.parseRange(rangeHeader) else {
            return .error(.rangeNotSatisfiable, "RANGE_INVALID", "Range '\(rangeHeader)' is not bytes=START-END")
        }
        let bytes: [UInt8]
        do throws(ChunksError) { bytes = try reader.read(digest, range: range) } catch {
            counters.withLock { $0.notHeld += 1 }
            return .error(error.code == .notFound ? .notFound : .internalServerError, "BLOB_UNKNOWN", error.message)
        }
        counters.withLock {
            $0.uploads += 1
            $0.bytesUploaded += UInt64(bytes.count)
        }
        return HTTPAnswer(status: .partialContent,
                          headers: [("Content-Type", "application/octet-stream"),
                                    ("Content-Range", "bytes \(range.lowerBound)-\(range.upperBound - 1)/*")],
                          body: bytes)
    }

    /// `bytes=A-B` (one range, both ends given) as A..<B+1.
    static func parseRange(_ header: String) -> Range<UInt64>? {
        guard header.hasPrefix("bytes=") else { return nil }
        let ends = header.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 2, let a = UInt64(ends[0]), let b = UInt64(ends[1]), b >= a, b - a < 1 << 30 else { return nil }
        return a..<(b + 1)
    }
}
