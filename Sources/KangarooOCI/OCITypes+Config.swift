import Foundation

/// OCI image-spec, "Image Configuration". Unknown fields are ignored when
/// decoding; all fields but architecture and os are optional.
public struct ImageConfiguration: Codable, Sendable, Hashable {
    /// OCI image-spec, "Image Configuration" → `config` (execution parameters).
    public struct Config: Codable, Sendable, Hashable {
        public var user: String?
        public var env: [String]?
        public var entrypoint: [String]?
        public var cmd: [String]?
        public var workingDir: String?
        public var labels: [String: String]?
        public var exposedPorts: [String: EmptyObject]?
        public var volumes: [String: EmptyObject]?
        public var stopSignal: String?

        enum CodingKeys: String, CodingKey {
            case user = "User", env = "Env", entrypoint = "Entrypoint", cmd = "Cmd"
            case workingDir = "WorkingDir", labels = "Labels", exposedPorts = "ExposedPorts"
            case volumes = "Volumes", stopSignal = "StopSignal"
        }

        public init(user: String? = nil, env: [String]? = nil, entrypoint: [String]? = nil,
                    cmd: [String]? = nil, workingDir: String? = nil, labels: [String: String]? = nil,
                    exposedPorts: [String: EmptyObject]? = nil, volumes: [String: EmptyObject]? = nil,
                    stopSignal: String? = nil) {
            self.user = user
            self.env = env
            self.entrypoint = entrypoint
            self.cmd = cmd
            self.workingDir = workingDir
            self.labels = labels
            self.exposedPorts = exposedPorts
            self.volumes = volumes
            self.stopSignal = stopSignal
        }
    }

    /// OCI image-spec, "Image Configuration" → `rootfs`.
    public struct RootFS: Codable, Sendable, Hashable {
        public var type: String
        public var diffIDs: [Digest]

        enum CodingKeys: String, CodingKey {
            case type
            case diffIDs = "diff_ids"
        }

        public init(type: String = "layers", diffIDs: [Digest]) {
            self.type = type
            self.diffIDs = diffIDs
        }
    }

    /// OCI image-spec, "Image Configuration" → `history`.
    public struct History: Codable, Sendable, Hashable {
        public var created: String?
        public var createdBy: String?
        public var author: String?
        public var comment: String?
        public var emptyLayer: Bool?

        enum CodingKeys: String, CodingKey {
            case created, author, comment
            case createdBy = "created_by"
            case emptyLayer = "empty_layer"
        }

        public init(created: String? = nil, createdBy: String? = nil, author: String? = nil,
                    comment: String? = nil, emptyLayer: Bool? = nil) {
            self.created = created
            self.createdBy = createdBy
            self.author = author
            self.comment = comment
            self.emptyLayer = emptyLayer
        }
    }

    /// `{}` as used by ExposedPorts and Volumes.
    public struct EmptyObject: Codable, Sendable, Hashable {
        public init() {}
        public init(from decoder: any Decoder) throws { _ = try decoder.container(keyedBy: NoKeys.self) }
        public func encode(to encoder: any Encoder) throws { _ = encoder.container(keyedBy: NoKeys.self) }
        private struct NoKeys: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
    }

    public var created: String?
    public var author: String?
    public var architecture: String
    public var os: String
    public var variant: String?
    public var osVersion: String?
    public var osFeatures: [String]?
    public var config: Config?
    public var rootfs: RootFS
    public var history: [History]?

    enum CodingKeys: String, CodingKey {
        case created, author, architecture, os, variant, config, rootfs, history
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(created: String? = nil, author: String? = nil, architecture: String, os: String,
                variant: String? = nil, config: Config? = nil, rootfs: RootFS, history: [History]? = nil) {
        self.created = created
        self.author = author
        self.architecture = architecture
        self.os = os
        self.variant = variant
        self.config = config
        self.rootfs = rootfs
        self.history = history
    }

    public var platform: Platform {
        Platform(architecture: architecture, os: os, variant: variant, osVersion: osVersion, osFeatures: osFeatures)
    }
}

/// OCI image-spec, "Image Layout" → `oci-layout` file.
public struct ImageLayoutHeader: Codable, Sendable, Hashable {
    public var imageLayoutVersion: String
    public init(imageLayoutVersion: String = "1.0.0") { self.imageLayoutVersion = imageLayoutVersion }
}

/// Deterministic JSON for everything Kangaroo writes (sorted keys, no
/// escaped slashes), and tolerant decoding with OCIError.
public enum CanonicalJSON {
    public static func encode<T: Encodable>(_ value: T) throws(OCIError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return Array(try encoder.encode(value))
        } catch {
            throw OCIError(.invalidManifest, "cannot encode \(T.self) as JSON", underlying: error)
        }
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], what: String) throws(OCIError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw OCIError(.invalidManifest, "\(what) is not a valid \(T.self): \(describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "\(error)" }
        func path(_ context: DecodingError.Context) -> String {
            let p = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            return p.isEmpty ? "" : " at '\(p)'"
        }
        switch error {
        case .keyNotFound(let key, let context): return "missing field '\(key.stringValue)'\(path(context))"
        case .typeMismatch(_, let context): return "wrong type\(path(context)): \(context.debugDescription)"
        case .valueNotFound(_, let context): return "missing value\(path(context))"
        case .dataCorrupted(let context): return "\(context.debugDescription)\(path(context))"
        @unknown default: return "\(error)"
        }
    }
}
