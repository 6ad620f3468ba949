// Constants of the kernel FUSE protocol (include/uapi/linux/fuse.h,
// protocol 7.45). We speak 7.x with x = min(kernel, FUSEProtocol.minor).

/// Protocol version and limits.
public enum FUSEProtocol {
    public static let major: UInt32 = 7
    public static let minor: UInt32 = 45
    /// The nodeid of the root directory.
    public static let rootID: UInt64 = 1
    /// Largest READ reply / WRITE payload we negotiate (FUSE_MAX_PAGES).
    public static let maxTransfer = 1 << 20
    public static let maxPages: UInt16 = 256
    /// Bytes a worker's request buffer needs: max payload plus headers.
    public static let requestBufferSize = maxTransfer + 4096
    /// Bytes a worker's reply buffer needs: header plus max payload.
    public static let replyBufferSize = maxTransfer + 4096
    static let minimumMinor: UInt32 = 31
}

/// Request opcodes (enum fuse_opcode).
public enum FUSEOpcode: UInt32, Sendable, CaseIterable {
    case lookup = 1, forget = 2, getattr = 3, setattr = 4, readlink = 5, symlink = 6
    case mknod = 8, mkdir = 9, unlink = 10, rmdir = 11, rename = 12, link = 13
    case open = 14, read = 15, write = 16, statfs = 17, release = 18
    case fsync = 20, setxattr = 21, getxattr = 22, listxattr = 23, removexattr = 24
    case flush = 25, initialize = 26, opendir = 27, readdir = 28, releasedir = 29
    case fsyncdir = 30, getlk = 31, setlk = 32, setlkw = 33, access = 34
    case create = 35, interrupt = 36, bmap = 37, destroy = 38, ioctl = 39
    case poll = 40, notifyReply = 41, batchForget = 42, fallocate = 43
    case readdirplus = 44, rename2 = 45, lseek = 46, copyFileRange = 47
    case setupMapping = 48, removeMapping = 49, syncfs = 50, tmpfile = 51
    case statx = 52, copyFileRange64 = 53

    /// Operations that modify the filesystem: answered EROFS.
    var isWrite: Bool {
        switch self {
        case .setattr, .symlink, .mknod, .mkdir, .unlink, .rmdir, .rename, .link,
             .write, .setxattr, .removexattr, .create, .fallocate, .rename2,
             .copyFileRange, .tmpfile, .copyFileRange64:
            return true
        default:
            return false
        }
    }

    /// Requests the kernel expects no reply to.
    var expectsNoReply: Bool {
        self == .forget || self == .batchForget || self == .interrupt
    }
}

/// INIT flags (fuse_init_in.flags | flags2 << 32).
public struct FUSEInitFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let asyncRead = FUSEInitFlags(rawValue: 1 << 0)
    public static let posixLocks = FUSEInitFlags(rawValue: 1 << 1)
    public static let atomicOTrunc = FUSEInitFlags(rawValue: 1 << 3)
    public static let exportSupport = FUSEInitFlags(rawValue: 1 << 4)
    public static let bigWrites = FUSEInitFlags(rawValue: 1 << 5)
    public static let autoInvalData = FUSEInitFlags(rawValue: 1 << 12)
    public static let doReaddirplus = FUSEInitFlags(rawValue: 1 << 13)
    public static let readdirplusAuto = FUSEInitFlags(rawValue: 1 << 14)
    public static let asyncDIO = FUSEInitFlags(rawValue: 1 << 15)
    public static let noOpenSupport = FUSEInitFlags(rawValue: 1 << 17)
    public static let parallelDirops = FUSEInitFlags(rawValue: 1 << 18)
    public static let abortError = FUSEInitFlags(rawValue: 1 << 21)
    public static let maxPages = FUSEInitFlags(rawValue: 1 << 22)
    public static let cacheSymlinks = FUSEInitFlags(rawValue: 1 << 23)
    public static let noOpendirSupport = FUSEInitFlags(rawValue: 1 << 24)
    public static let explicitInvalData = FUSEInitFlags(rawValue: 1 << 25)
    public static let initExt = FUSEInitFlags(rawValue: 1 << 30)
    public static let passthrough = FUSEInitFlags(rawValue: 1 << 37)
    public static let noExportSupport = FUSEInitFlags(rawValue: 1 << 38)
    /// Idmapped mounts of the file system (7.40, with default_permissions):
    /// a user-namespaced container sees a lazy image with its owners mapped.
    public static let allowIdmap = FUSEInitFlags(rawValue: 1 << 40)
    /// FUSE over io_uring (7.42): the kernel offers it when the fuse module
    /// has enable_uring set; requests then travel through per-CPU rings.
    public static let overIOUring = FUSEInitFlags(rawValue: 1 << 41)

    /// What we ask for (intersected with what the kernel offers).
    public static let wanted: FUSEInitFlags = [
        .asyncRead, .parallelDirops, .cacheSymlinks, .doReaddirplus,
        .maxPages, .abortError, .asyncDIO, .initExt,
        .noOpenSupport, .noOpendirSupport, .overIOUring, .allowIdmap,
    ]
}

/// fuse_open_out.open_flags.
public struct FUSEOpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let directIO = FUSEOpenFlags(rawValue: 1 << 0)
    public static let keepCache = FUSEOpenFlags(rawValue: 1 << 1)
    public static let nonSeekable = FUSEOpenFlags(rawValue: 1 << 2)
    public static let cacheDir = FUSEOpenFlags(rawValue: 1 << 3)
    public static let noFlush = FUSEOpenFlags(rawValue: 1 << 5)
    public static let parallelDirectWrites = FUSEOpenFlags(rawValue: 1 << 6)
}
