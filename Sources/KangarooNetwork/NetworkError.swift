/// The one error type of KangarooNetwork: a code (mapped to CNI's error
/// codes), a message a user can act on and the underlying cause.
public struct NetworkError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The caller asked for a CNI version this plugin does not speak.
        case incompatibleVersion
        /// A field of the configuration is not supported.
        case unsupportedField
        /// The container (or its attachment) is unknown.
        case unknownContainer
        /// A CNI_* environment variable is missing or wrong.
        case invalidEnvironment
        /// The kernel or a file refused an operation.
        case system
        /// The configuration on stdin is not JSON of the expected shape.
        case decoding
        /// The configuration is JSON but makes no sense (a bad subnet, a
        /// name too long for an interface).
        case invalidConfig
        /// Try again later (the pool's lock is held too long).
        case tryAgain
        /// The subnet has no free address.
        case exhausted

        /// CNI spec 1.0 error codes (100 and up: the plugin's own).
        public var cniCode: Int {
            switch self {
            case .incompatibleVersion: 1
            case .unsupportedField: 2
            case .unknownContainer: 3
            case .invalidEnvironment: 4
            case .system: 5
            case .decoding: 6
            case .invalidConfig: 7
            case .tryAgain: 11
            case .exhausted: 100
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
