/// One entry of a layer tar archive, as read by `LayerReader`, with the path
/// already cleaned (see `LayerEntry.cleanPath`).
///
/// Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are passed
/// through unchanged as regular entries; applying them is the image
/// builder's job (OCI image-spec, "Image Layer Filesystem Changeset").
public struct LayerEntry: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case regular
        case directory
        case symlink(target: String)
        /// A hard link to another path of the same or an earlier layer (cleaned).
        case hardlink(target: String)
        case characterDevice(major: UInt32, minor: UInt32)
        case blockDevice(major: UInt32, minor: UInt32)
        case fifo
        case socket
    }

    /// Cleaned relative path, components separated by `/`, no leading `/`,
    /// no `.` or `..` components. Empty for the root directory itself (an
    /// archive entry `./` or `/`), so the builder can take the root's mode,
    /// owner and mtime from it.
    public var path: String
    public var kind: Kind
    /// Permission bits including setuid/setgid/sticky (07777).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Modification time, seconds and nanoseconds since the epoch.
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    /// Logical size for regular files (sparse files: the full size).
    public var size: UInt64
    /// Extended attributes, name to raw value, sorted by name when iterated
    /// through `sortedXattrs`.
    public var xattrs: [String: [UInt8]]

    public init(path: String, kind: Kind, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0,
                mtimeSeconds: Int64 = 0, mtimeNanoseconds: UInt32 = 0, size: UInt64 = 0,
                xattrs: [String: [UInt8]] = [:]) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtimeSeconds = mtimeSeconds
        self.mtimeNanoseconds = mtimeNanoseconds
        self.size = size
        self.xattrs = xattrs
    }

    public var sortedXattrs: [(name: String, value: [UInt8])] {
        xattrs.sorted { $0.key < $1.key }.map { (name: $0.key, value: $0.value) }
    }
}
