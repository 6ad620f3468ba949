import Foundation
import Glibc
import KangarooChunks
import Logging
import Synchronization

/// A minimal HTTP/1.1 endpoint serving metrics in the Prometheus text
/// exposition format (version 0.0.4) on GET /metrics: a lazy mount's
/// counters, or the node daemon's. It listens on the address given (default
/// loopback only: the figures name images and paths), answers one request
/// per connection on one thread, and closes when its owner stops.
public final class MetricsEndpoint: Sendable {
    let listenFD: Int32
    public let port: UInt16
    private let open = Atomic<Bool>(true)

    /// Binds `host:port` (port 0 picks a free one, see `port`).
    public convenience init(host: String, port: UInt16, logger: Logger, snapshot: @escaping @Sendable () -> LazyStats) throws(LazyFSError) {
        try self.init(host: host, port: port, logger: logger, body: { Self.render(snapshot()) })
    }

    /// Serves what `body` renders (Prometheus text) on every GET /metrics.
    public init(host: String, port: UInt16, logger: Logger, body: @escaping @Sendable () -> String) throws(LazyFSError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw LazyFSError(.mount, "metrics endpoint: socket failed: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            Glibc.close(fd)
            throw LazyFSError(.mount, "metrics endpoint: '\(host)' is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw LazyFSError(.mount, "metrics endpoint: cannot listen on \(host):\(port): \(message)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listenFD = fd
        self.port = UInt16(bigEndian: actual.sin_port)
        Thread.detachNewThread { [self] in serve(logger: logger, body: body) }
    }

    /// Stops accepting and closes the socket.
    public func close() {
        guard open.exchange(false, ordering: .sequentiallyConsistent) else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
    }

    private func serve(logger: Logger, body render: @escaping @Sendable () -> String) {
        while open.load(ordering: .sequentiallyConsistent) {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var request = [UInt8](repeating: 0, count: 4096)
            let n = read(client, &request, request.count)
            let line = n > 0 ? String(decoding: request[0..<n].prefix { $0 != 13 && $0 != 10 }, as: UTF8.self) : ""
            let parts = line.split(separator: " ")
            let response: String
            if parts.count >= 2, parts[0] == "GET", parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") {
                let body = render()
                response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            } else {
                let body = "only GET /metrics is served\n"
                response = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            }
            var bytes = Array(response.utf8)
            var sent = 0
            while sent < bytes.count {
                let w = bytes.withUnsafeMutableBytes { write(client, $0.baseAddress! + sent, $0.count - sent) }
                if w <= 0 { break }
                sent += w
            }
            Glibc.close(client)
        }
    }

    /// The Prometheus text format of `s`.
    public static func render(_ s: LazyStats) -> String {
        let labels = "mountpoint=\"\(escape(s.mountPoint))\""
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: String, extra: String = "") {
            out += "# HELP kangaroo_lazy_\(name) \(help)\n# TYPE kangaroo_lazy_\(name) \(type)\n"
            out += "kangaroo_lazy_\(name){\(labels)\(extra)} \(value)\n"
        }
        metric("fetched_bytes_total", "counter", "Compressed bytes read from the chunk source.", "\(s.bytesFetched)")
        metric("range_requests_total", "counter", "Range requests sent to the chunk source (after merging).", "\(s.rangeRequests)")
        metric("chunks_fetched_total", "counter", "Chunks fetched and verified.", "\(s.chunksFetched)")
        metric("chunks_cached", "gauge", "Chunks of the image in the chunk cache.", "\(s.chunksCached)")
        metric("chunks", "gauge", "Chunks of the image.", "\(s.chunksTotal)")
        metric("cache_hits_total", "counter", "Chunk lookups of reads that found the chunk cached.", "\(s.cacheHits)")
        metric("cache_misses_total", "counter", "Chunk lookups of reads that had to fetch.", "\(s.cacheMisses)")
        metric("in_flight_chunks", "gauge", "Chunks whose fetch is under way.", "\(s.inFlight)")
        metric("errors_total", "counter", "Failed fetches, verifications, timeouts and cache writes.", "\(s.errors)")
        metric("verification_failures_total", "counter", "Chunks that failed verification (never served).", "\(s.verificationFailures)")
        metric("timeouts_total", "counter", "Reads that gave up at the deadline.", "\(s.timeouts)")
        out += "# HELP kangaroo_lazy_fetch_latency_milliseconds Range request latency over the last 4096 requests.\n"
        out += "# TYPE kangaroo_lazy_fetch_latency_milliseconds summary\n"
        for (q, v) in [("0.5", s.fetchLatencyP50Ms), ("0.9", s.fetchLatencyP90Ms), ("0.99", s.fetchLatencyP99Ms)] {
            out += "kangaroo_lazy_fetch_latency_milliseconds{\(labels),quantile=\"\(q)\"} \(v)\n"
        }
        metric("prefetch_done", "gauge", "1 once the background prefetch has finished.", s.prefetchDone ? "1" : "0")
        if let sources = s.sources, !sources.isEmpty {
            let series: [(String, String, String, (SourceStats) -> String)] = [
                ("source_bytes_total", "counter", "Compressed bytes each host (mirror or registry) delivered.", { "\($0.bytes)" }),
                ("source_requests_total", "counter", "Range requests sent to each host.", { "\($0.requests)" }),
                ("source_failures_total", "counter", "Range requests each host failed.", { "\($0.failures)" }),
                ("source_up", "gauge", "1 while the host is in use, 0 while failures keep it out.", { $0.state == "up" ? "1" : "0" }),
            ]
            for (name, type, help, value) in series {
                out += "# HELP kangaroo_lazy_\(name) \(help)\n# TYPE kangaroo_lazy_\(name) \(type)\n"
                for source in sources {
                    out += "kangaroo_lazy_\(name){\(labels),source=\"\(escape(source.name))\",role=\"\(source.role)\"} \(value(source))\n"
                }
            }
        }
        return out
    }

    public static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
