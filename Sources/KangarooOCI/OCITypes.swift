import Foundation

/// Media types of OCI image-spec ("Media Types") and Docker image manifest v2.
public enum MediaTypes {
    // OCI image-spec, "Media Types".
    public static let imageManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let imageIndex = "application/vnd.oci.image.index.v1+json"
    public static let imageConfig = "application/vnd.oci.image.config.v1+json"
    public static let layer = "application/vnd.oci.image.layer.v1.tar"
    public static let layerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let layerNondistributableGzip = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    public static let emptyJSON = "application/vnd.oci.empty.v1+json"
    public static let layoutHeader = "application/vnd.oci.layout.header.v1+json"

    // Docker Image Manifest V2, Schema 2.
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    public static let dockerForeignLayerGzip = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    /// Media types that name a single-platform image manifest.
    public static let manifests: Set<String> = [imageManifest, dockerManifest]
    /// Media types that name an index of manifests.
    public static let indexes: Set<String> = [imageIndex, dockerManifestList]

    /// The layer compression a media type implies, nil when not a known layer type.
    public static func layerCompression(_ mediaType: String) -> LayerReader.Compression? {
        switch mediaType {
        case layer: return LayerReader.Compression.none
        case layerGzip, layerNondistributableGzip, dockerLayerGzip, dockerForeignLayerGzip: return .gzip
        case layerZstd: return .zstd
        default: return nil
        }
    }
}

/// OCI image-spec, "Image Index" → platform object; also used in descriptors.
public struct Platform: Codable, Sendable, Hashable, CustomStringConvertible {
    public var architecture: String
    public var os: String
    public var variant: String?
    public var osVersion: String?
    public var osFeatures: [String]?

    enum CodingKeys: String, CodingKey {
        case architecture, os, variant
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(architecture: String, os: String, variant: String? = nil,
                osVersion: String? = nil, osFeatures: [String]? = nil) {
        self.architecture = architecture
        self.os = os
        self.variant = variant
        self.osVersion = osVersion
        self.osFeatures = osFeatures
    }

    public static let linuxAMD64 = Platform(architecture: "amd64", os: "linux")
    public static let linuxARM64 = Platform(architecture: "arm64", os: "linux", variant: "v8")

    /// Parses `os/arch[/variant]`, e.g. `linux/amd64` or `linux/arm64/v8`.
    public init(parsing string: String) throws(OCIError) {
        let parts = string.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 2, parts.count <= 3, parts.allSatisfy({ !$0.isEmpty }) else {
            throw OCIError(.invalidReference, "platform '\(string)' is not os/arch[/variant], e.g. linux/amd64")
        }
        self.init(architecture: parts[1], os: parts[0], variant: parts.count == 3 ? parts[2] : nil)
    }

    /// Whether an index entry's platform satisfies this wanted platform:
    /// same os and architecture, and the same variant when both name one
    /// (arm64's default variant v8 matches a missing variant).
    public func matches(_ candidate: Platform) -> Bool {
        guard os == candidate.os, architecture == candidate.architecture else { return false }
        let normalize: (String?) -> String? = { v in
            if self.architecture == "arm64", v == "v8" { return nil }
            return v
        }
        guard let wanted = normalize(variant) else { return true }
        return normalize(candidate.variant) == wanted
    }

    public var description: String {
        variant.map { "\(os)/\(architecture)/\($0)" } ?? "\(os)/\(architecture)"
    }
}

/// OCI image-spec, "Descriptors".
public struct Descriptor: Codable, Sendable, Hashable {
    public var mediaType: String
    public var digest: Digest
    public var size: Int64
    public var urls: [String]?
    public var annotations: [String: String]?
    public var platform: Platform?
    public var artifactType: String?

    public init(mediaType: String, digest: Digest, size: Int64, urls: [String]? = nil,
                annotations: [String: String]? = nil, platform: Platform? = nil, artifactType: String? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.urls = urls
        self.annotations = annotations
        self.platform = platform
        self.artifactType = artifactType
    }
}

/// Annotation keys of OCI image-spec, "Pre-Defined Annotation Keys".
public enum AnnotationKeys {
    public static let refName = "org.opencontainers.image.ref.name"
    public static let created = "org.opencontainers.image.created"
}

/// OCI image-spec, "Image Manifest" (also reads Docker schema 2 manifests).
public struct ImageManifest: Codable, Sendable, Hashable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var subject: Descriptor?
    public var annotations: [String: String]?

    public init(mediaType: String? = MediaTypes.imageManifest, artifactType: String? = nil,
                config: Descriptor, layers: [Descriptor], subject: Descriptor? = nil,
                annotations: [String: String]? = nil) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.artifactType = artifactType
        self.config = config
        self.layers = layers
        self.subject = subject
        self.annotations = annotations
    }
}

/// OCI image-spec, "Image Index" (also reads Docker manifest lists).
public struct ImageIndex: Codable, Sendable, Hashable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var manifests: [Descriptor]
    public var subject: Descriptor?
    public var annotations: [String: String]?

    public init(mediaType: String? = MediaTypes.imageIndex, manifests: [Descriptor],
                annotations: [String: String]? = nil) {
        self.schemaVersion = 2
        self.mediaType = mediaType
        self.manifests = manifests
        self.annotations = annotations
    }

    /// The manifest for `platform`, preferring an exact variant match.
    public func manifest(for platform: Platform) -> Descriptor? {
        let candidates = manifests.filter { d in
            guard MediaTypes.manifests.contains(d.mediaType) || d.mediaType.isEmpty else { return false }
            guard let p = d.platform else { return false }
            return platform.matches(p)
        }
        return candidates.first { $0.platform?.variant == platform.variant } ?? candidates.first
    }
}
