import Crypto
import Foundation

/// A content digest, `algorithm:hex` (OCI image-spec, "Digests").
///
/// Only `sha256` is produced; `sha512` is accepted when parsing.
public struct Digest: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let algorithm: String
    public let encoded: String

    public init(algorithm: String = "sha256", encoded: String) throws(OCIError) {
        let expectedLength: Int
        switch algorithm {
        case "sha256": expectedLength = 64
        case "sha512": expectedLength = 128
        default: throw OCIError(.invalidDigest, "unsupported digest algorithm '\(algorithm)'")
        }
        guard encoded.utf8.count == expectedLength,
              encoded.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
        else {
            throw OCIError(.invalidDigest, "digest '\(algorithm):\(encoded)' is not \(expectedLength) lowercase hex digits")
        }
        self.algorithm = algorithm
        self.encoded = encoded
    }

    /// Parses `sha256:<64 hex>`.
    public init(parsing string: String) throws(OCIError) {
        guard let colon = string.firstIndex(of: ":") else {
            throw OCIError(.invalidDigest, "digest '\(string)' has no algorithm prefix (expected sha256:<hex>)")
        }
        try self.init(algorithm: String(string[..<colon]), encoded: String(string[string.index(after: colon)...]))
    }

    /// The SHA-256 digest of `bytes`.
    public static func sha256<D: DataProtocol>(of bytes: D) -> Digest {
        Digest(sha256: SHA256.hash(data: bytes))
    }

    public init(sha256 hash: SHA256.Digest) {
        self.algorithm = "sha256"
        self.encoded = hash.hexString
    }

    /// Raw digest bytes (32 for sha256).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encoded.utf8.count / 2)
        var high: UInt8 = 0
        for (i, c) in encoded.utf8.enumerated() {
            let v: UInt8 = c <= 0x39 ? c - 0x30 : c - 0x61 + 10
            if i % 2 == 0 { high = v } else { out.append(high << 4 | v) }
        }
        return out
    }

    /// Builds a sha256 digest from 32 raw bytes.
    public init(sha256Bytes raw: some Collection<UInt8>) throws(OCIError) {
        guard raw.count == 32 else { throw OCIError(.invalidDigest, "sha256 digest must be 32 bytes, got \(raw.count)") }
        self.algorithm = "sha256"
        self.encoded = raw.hexString
    }

    public var description: String { "\(algorithm):\(encoded)" }

    public static func < (lhs: Digest, rhs: Digest) -> Bool { lhs.description < rhs.description }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        do { try self.init(parsing: string) } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.message)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Incremental SHA-256 hasher producing a `Digest`.
///
/// A value type: `SHA256` is copy-on-write state with no sharing, hence
/// `@unchecked Sendable`.
public struct DigestHasher: @unchecked Sendable {
    private var hasher = SHA256()
    public init() {}
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    public mutating func update<D: DataProtocol>(_ bytes: D) { hasher.update(data: bytes) }
    public func finalize() -> Digest { Digest(sha256: hasher.finalize()) }
}

extension Sequence where Element == UInt8 {
    var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
