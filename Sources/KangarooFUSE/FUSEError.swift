import SystemPackage

/// The one error type of KangarooFUSE: a code, a message a user can act on,
/// the errno (sent to the kernel when a filesystem operation fails, or the
/// failing syscall's errno otherwise) and the underlying cause.
public struct FUSEError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A filesystem operation failed; `errno` goes back to the kernel.
        case operation
        /// Opening or cloning /dev/fuse failed.
        case device
        /// mount(2) failed.
        case mount
        /// umount2(2) failed.
        case unmount
        /// The kernel spoke a protocol we cannot serve (e.g. major != 7).
        case `protocol`
        /// The server was used in the wrong lifecycle state.
        case state
        /// Starting a worker thread failed.
        case thread
    }

    public let code: Code
    public let message: String
    public let errno: Errno
    public let underlying: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, errno: Errno = .ioError, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.underlying = underlying
    }

    /// A filesystem operation failure that replies `errno` to the kernel.
    public init(_ errno: Errno) {
        self.init(.operation, "filesystem operation failed", errno: errno)
    }

    public static let noEntry = FUSEError(.noSuchFileOrDirectory)
    public static let notDirectory = FUSEError(.notDirectory)
    public static let isDirectory = FUSEError(.isDirectory)
    public static let invalid = FUSEError(.invalidArgument)
    public static let io = FUSEError(.ioError)
    public static let notSupported = FUSEError(.noFunction)
    public static let readOnly = FUSEError(.readOnlyFileSystem)
    /// ENODATA: the attribute does not exist (getxattr).
    public static let noAttribute = FUSEError(Errno(rawValue: 61))
    /// ERANGE: the caller's buffer is too small.
    public static let range = FUSEError(Errno(rawValue: 34))

    public var description: String {
        var text = "\(message) (\(errno))"
        if let underlying { text += ": \(underlying)" }
        return text
    }
}
