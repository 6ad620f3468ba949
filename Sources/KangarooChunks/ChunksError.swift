/// The one error type of KangarooChunks: a code, a message a user can act on
/// and the underlying cause.
public struct ChunksError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// The host does not have the blob (or the range): try the next one.
        case notFound
        /// The host failed (connection, 5xx, a short answer): try the next one.
        case unavailable
        /// The host did not answer in time.
        case timeout
        /// No host is configured for the operation, or every host failed.
        case exhausted
        case invalidArgument
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
}

/// Wraps a non-Sendable-typed error as an underlying cause.
public struct ErrorText: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ error: any Error) { description = String(describing: error) }
}
