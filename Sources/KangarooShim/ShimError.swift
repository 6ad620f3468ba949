/// The one error type of KangarooShim: a code (mapped to the gRPC status
/// codes containerd expects over ttrpc), a message a user can act on and the
/// underlying cause.
public struct ShimError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidArgument, notFound, alreadyExists, failedPrecondition, unimplemented, unavailable
        case deadlineExceeded, internalError, protocolError

        /// google.rpc.Code.
        public var grpcCode: Int32 {
            switch self {
            case .invalidArgument: 3
            case .deadlineExceeded: 4
            case .notFound: 5
            case .alreadyExists: 6
            case .failedPrecondition: 9
            case .unimplemented: 12
            case .internalError, .protocolError: 13
            case .unavailable: 14
            }
        }

        public init(grpcCode: Int32) {
            switch grpcCode {
            case 3: self = .invalidArgument
            case 4: self = .deadlineExceeded
            case 5: self = .notFound
            case 6: self = .alreadyExists
            case 9: self = .failedPrecondition
            case 12: self = .unimplemented
            case 14: self = .unavailable
            default: self = .internalError
            }
        }
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
