/// The one error type of KangarooImage: a code, a message a user can act on,
/// and the underlying cause.
public struct ImageError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// The bootstrap (EROFS metadata or Kangaroo extension) is malformed.
        case corruptBootstrap
        /// A chunk or blob does not match its recorded digest or size.
        case digestMismatch
        /// A layer entry is unsafe (path through a symlink, dangling hardlink, bad name).
        case hostileEntry
        /// The input uses something this format cannot represent.
        case unsupported
        /// An argument or option is out of range.
        case invalidArgument
        /// A path or inode does not exist in the image.
        case notFound
        /// Compression or decompression failed.
        case compression
        /// A file system operation failed.
        case io
        /// Reading the source image (OCI layout, layers) failed.
        case source
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
        if let underlying { return "\(message): \(underlying)" }
        return message
    }

    static func corrupt(_ message: String) -> ImageError { ImageError(.corruptBootstrap, "bootstrap is corrupt: " + message) }
}
