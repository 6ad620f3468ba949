/// The one error type of KangarooOCI: a code, a message a user can act on,
/// and the underlying cause.
public struct OCIError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidDigest, invalidReference, invalidManifest, invalidLayout
        case notFound, unauthorized, registry, network, timeout
        case digestMismatch, io, invalidLayer, hostileEntry, unsupported
        /// The registry answered 5xx or 429 (after the configured retries).
        case unavailable
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

/// Runs `body` (typically a `rethrows` buffer accessor around typed-throwing
/// code) and narrows its error back to `OCIError`.
@inline(__always)
func narrowingToOCIError<R>(_ body: () throws -> R) throws(OCIError) -> R {
    do {
        return try body()
    } catch let error as OCIError {
        throw error
    } catch {
        throw OCIError(.io, "unexpected error", underlying: SendableErrorBox(error))
    }
}

/// Wraps a non-Sendable-typed error (as thrown by HTTPClient) as a Sendable underlying cause.
public struct SendableErrorBox: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ error: any Error) { self.description = String(describing: error) }
}
