/// The one error type of KangarooSnapshotter: a code (mapped to the gRPC
/// status codes containerd's snapshot proxy turns back into errdefs), a
/// message a user can act on and the underlying cause.
public struct SnapshotterError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// errdefs.ErrInvalidArgument: a malformed key, label or filter.
        case invalidArgument
        /// errdefs.ErrNotFound: no such snapshot (or parent).
        case notFound
        /// errdefs.ErrAlreadyExists: the key exists, or (remote layers) the
        /// target snapshot is ready and nothing needs to be unpacked.
        case alreadyExists
        /// errdefs.ErrFailedPrecondition: wrong kind, snapshot has children.
        case failedPrecondition
        case unavailable
        case internalError
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        guard let underlying else { return message }
        return "\(message): \(underlying)"
    }
}
