import KangarooImage

/// The one error type of KangarooLazyFS: a code, a message a user can act on
/// and the underlying cause.
public struct LazyFSError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// The chunk cache directory or one of its files cannot be used.
        case cache
        /// Fetching from the chunk source failed after the retries.
        case fetch
        /// A chunk did not match its digest or size; it is never served.
        case verification
        /// A read waited longer than the configured deadline.
        case timeout
        /// The mount point, the FUSE server or mount(2) failed.
        case mount
        /// The image cannot be mounted this way (e.g. kernel mode with an incomplete cache).
        case unsupported
        /// The image metadata is unusable.
        case image
    }

    public let code: Code
    public let message: String
    public let underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        var text = message
        if let underlying { text += ": \(underlying)" }
        return text
    }
}
