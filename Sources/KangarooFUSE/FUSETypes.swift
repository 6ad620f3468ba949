/// A timestamp as FUSE carries it: seconds and nanoseconds since the epoch.
public struct FUSETime: Sendable, Hashable {
    public var seconds: UInt64
    public var nanoseconds: UInt32
    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
    public static let zero = FUSETime(seconds: 0)
}

/// File type bits of `st_mode` (S_IFMT) and the dirent `d_type` values.
public enum FUSEFileType: UInt32, Sendable, CaseIterable {
    case fifo = 0o010000
    case characterDevice = 0o020000
    case directory = 0o040000
    case blockDevice = 0o060000
    case regular = 0o100000
    case symlink = 0o120000
    case socket = 0o140000

    public init?(mode: UInt32) { self.init(rawValue: mode & 0o170000) }

    /// The `d_type` (DT_*) a directory entry of this type carries.
    public var direntType: UInt32 { rawValue >> 12 }
}

/// Attributes of one inode (struct fuse_attr).
public struct FUSEAttributes: Sendable, Hashable {
    /// Inode number `st_ino` shows; usually the nodeid.
    public var inode: UInt64
    public var size: UInt64
    /// 512-byte blocks (`st_blocks`).
    public var blocks: UInt64
    public var accessTime: FUSETime
    public var modificationTime: FUSETime
    public var changeTime: FUSETime
    /// Full `st_mode`: type bits and permissions.
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt32
    /// Preferred I/O size (`st_blksize`); 0 lets the kernel choose.
    public var blockSize: UInt32

    public init(
        inode: UInt64, mode: UInt32, size: UInt64 = 0, blocks: UInt64? = nil,
        linkCount: UInt32 = 1, uid: UInt32 = 0, gid: UInt32 = 0, rdev: UInt32 = 0,
        accessTime: FUSETime = .zero, modificationTime: FUSETime = .zero, changeTime: FUSETime = .zero,
        blockSize: UInt32 = 0
    ) {
        self.inode = inode
        self.mode = mode
        self.size = size
        self.blocks = blocks ?? (size + 511) / 512
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
        self.blockSize = blockSize
    }

    public var type: FUSEFileType? { FUSEFileType(mode: mode) }
}

/// The answer to LOOKUP (and each READDIRPLUS entry): a nodeid the kernel
/// will use to address the inode, its attributes and cache lifetimes.
public struct FUSEEntry: Sendable, Hashable {
    /// The nodeid; the root is 1 (`FUSEProtocol.rootID`). Hardlinks share it.
    public var nodeID: UInt64
    /// nodeid:generation must be unique for the lifetime of the mount.
    public var generation: UInt64
    public var attributes: FUSEAttributes
    /// How long the kernel may cache the name -> nodeid binding.
    public var entryTimeout: Duration
    /// How long the kernel may cache the attributes.
    public var attributeTimeout: Duration

    public init(
        nodeID: UInt64, attributes: FUSEAttributes, generation: UInt64 = 0,
        entryTimeout: Duration = .seconds(86_400), attributeTimeout: Duration = .seconds(86_400)
    ) {
        self.nodeID = nodeID
        self.generation = generation
        self.attributes = attributes
        self.entryTimeout = entryTimeout
        self.attributeTimeout = attributeTimeout
    }
}

/// Filesystem statistics (struct fuse_kstatfs), as statfs(2) reports them.
public struct FUSEStatfs: Sendable, Hashable {
    public var blocks: UInt64
    public var blocksFree: UInt64
    public var blocksAvailable: UInt64
    public var files: UInt64
    public var filesFree: UInt64
    public var blockSize: UInt32
    public var nameMax: UInt32
    public var fragmentSize: UInt32

    public init(
        blocks: UInt64 = 0, blocksFree: UInt64 = 0, blocksAvailable: UInt64 = 0,
        files: UInt64 = 0, filesFree: UInt64 = 0, blockSize: UInt32 = 4096,
        nameMax: UInt32 = 255, fragmentSize: UInt32 = 4096
    ) {
        self.blocks = blocks
        self.blocksFree = blocksFree
        self.blocksAvailable = blocksAvailable
        self.files = files
        self.filesFree = filesFree
        self.blockSize = blockSize
        self.nameMax = nameMax
        self.fragmentSize = fragmentSize
    }
}

/// The answer to OPEN / OPENDIR: a handle the kernel passes back on READ,
/// READDIR and RELEASE, and the open flags (FOPEN_*).
public struct FUSEOpenReply: Sendable, Hashable {
    public var handle: UInt64
    public var flags: FUSEOpenFlags
    public init(handle: UInt64 = 0, flags: FUSEOpenFlags) {
        self.handle = handle
        self.flags = flags
    }
    /// Immutable content: keep the page cache across opens, no FLUSH on close.
    public static let immutableFile = FUSEOpenReply(flags: [.keepCache, .noFlush])
    /// Immutable directory: let the kernel cache READDIR results.
    public static let immutableDirectory = FUSEOpenReply(flags: [.keepCache, .cacheDir])
}
