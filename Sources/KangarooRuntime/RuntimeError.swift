#if canImport(Glibc)
import Glibc
#endif
import KangarooSystem

/// The one error type of KangarooRuntime: a code, a message a user can act on
/// and, where a syscall failed, its errno.
public struct RuntimeError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidConfig       // config.json / process.json rejected; message names the JSON path
        case invalidArgument     // bad command line
        case notFound            // no such container
        case exists              // container id already used
        case invalidState        // operation not allowed in the container's state
        case system              // a syscall failed
        case hook                // an OCI hook failed
        case containerInit       // the container init reported a setup error
        case unsupported
    }

    public var code: Code
    public var message: String
    public var errno: Int32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    /// A failed syscall, reading the current errno.
    public static func sys(_ what: String, _ err: Int32 = Glibc.errno) -> RuntimeError {
        RuntimeError(.system, what, errno: err)
    }

    public var description: String {
        guard let errno else { return message }
        return message + ": " + String(cString: strerror(errno))
    }
}
