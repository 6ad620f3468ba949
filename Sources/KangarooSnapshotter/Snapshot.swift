import Foundation

/// containerd's snapshot kinds (snapshots.Kind; containerd/snapshots/snapshotter.go).
public enum SnapshotKind: String, Codable, Sendable {
    case view, active, committed
}

/// A layer of a Kangaroo image. It holds no data of its own: the image's
/// lazy mount (keyed by the bootstrap digest) serves the whole tree, so the
/// bootstrap layer's snapshot stands for the image and the blob layers'
/// snapshots for nothing (their bytes arrive through the mount).
public struct RemoteLayer: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable { case bootstrap, blob }
    public var role: Role
    /// The image: its bootstrap digest ("sha256:…", = its first diff_id).
    public var image: String
    /// What the lazy mount pulls: a registry reference, pinned by manifest
    /// digest when containerd passed one (CRI does; ctr-remote gives a tag).
    public var reference: String
}

/// Disk use of a snapshot's own directory (unique inodes, allocated bytes).
public struct SnapshotUsage: Codable, Sendable, Equatable {
    public var size: Int64
    public var inodes: Int64
    public init(size: Int64, inodes: Int64) {
        self.size = size
        self.inodes = inodes
    }
}

/// One snapshot as the store keeps it (containerd's snapshots.Info plus the
/// directory id and, for Kangaroo layers, where the data comes from).
public struct Snapshot: Codable, Sendable {
    public var id: UInt64
    public var name: String
    public var parent: String?
    public var kind: SnapshotKind
    public var created: Date
    public var updated: Date
    public var labels: [String: String]
    public var remote: RemoteLayer?
    /// Frozen at commit.
    public var usage: SnapshotUsage?
}

/// A mount as containerd's types.Mount carries it.
public struct MountSpec: Sendable, Equatable, CustomStringConvertible {
    public var type: String
    public var source: String
    public var options: [String]

    public init(type: String, source: String, options: [String]) {
        self.type = type
        self.source = source
        self.options = options
    }

    public var description: String { "\(type) \(source) \(options.joined(separator: ","))" }
}

/// The labels containerd passes with a layer's Prepare that the snapshotter
/// reads (containerd/snapshots/snapshotter.go, pkg/snapshotters/annotations.go,
/// stargz-snapshotter fs/source).
public enum SnapshotLabels {
    /// The chain id a layer's unpack should produce (set by the unpacker).
    public static let target = "containerd.io/snapshot.ref"
    /// On every layer descriptor of a Kangaroo manifest: `bootstrap` or `blob`.
    public static let kangarooLayer = "containerd.io/snapshot/kangaroo.layer"
    /// Set by this snapshotter on a Kangaroo layer's snapshot: the image.
    public static let kangarooImage = "containerd.io/snapshot/kangaroo.image"
    public static let criImageRef = "containerd.io/snapshot/cri.image-ref"
    public static let criManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
    public static let criLayerDigest = "containerd.io/snapshot/cri.layer-digest"
    public static let stargzReference = "containerd.io/snapshot/remote/stargz.reference"
    public static let stargzDigest = "containerd.io/snapshot/remote/stargz.digest"

    /// The registry reference a Kangaroo layer's labels name: CRI's image
    /// reference pinned to its manifest digest, else ctr-remote's reference.
    static func reference(_ labels: [String: String]) -> String? {
        if let ref = labels[criImageRef], !ref.isEmpty {
            if let digest = labels[criManifestDigest], digest.hasPrefix("sha256:") {
                return repository(of: ref) + "@" + digest
            }
            return ref
        }
        if let ref = labels[stargzReference], !ref.isEmpty { return ref }
        return nil
    }

    /// `host/name:tag` or `host/name@digest` without tag and digest.
    static func repository(of reference: String) -> String {
        var ref = reference
        if let at = ref.firstIndex(of: "@") { ref = String(ref[..<at]) }
        let lastSlash = ref.lastIndex(of: "/")
        if let colon = ref.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
            ref = String(ref[..<colon])
        }
        return ref
    }
}
