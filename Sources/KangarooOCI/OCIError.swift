/// The one error type of KangarooOCI: a code, a message a user can act on,
/// and the underlying cause.
public struct OCIError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidDigest, invalidReference, invalidManifest, invalidLayout
        case notFound, unauthorized, registry, network, timeout
        case digestMismatch, io, invalidLayer, hostileEntry, unsupported
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
