#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// mount(2) / umount2(2) for FUSE filesystems and mount-table queries.
public enum FUSEMount {
    /// Options of the FUSE mount (the `data` string of mount(2)).
    public struct Options: Sendable, Hashable {
        /// Shown as the source in /proc/mounts.
        public var source = "kangaroo"
        /// The filesystem type becomes `fuse.<subtype>`; nil mounts plain `fuse`.
        public var subtype: String? = "kangaroo"
        public var readOnly = true
        /// Let every user (not only the mounting uid) access the mount.
        public var allowOther = true
        /// Let the kernel check permissions from the mode bits.
        public var defaultPermissions = true
        public init() {}

        var fileSystemType: String { subtype.map { "fuse.\($0)" } ?? "fuse" }

        /// The mount(2) data string for device descriptor `fd`.
        func data(fd: Int32, uid: UInt32, gid: UInt32) -> String {
            var parts = ["fd=\(fd)", "rootmode=40000", "user_id=\(uid)", "group_id=\(gid)"]
            if defaultPermissions { parts.append("default_permissions") }
            if allowOther { parts.append("allow_other") }
            return parts.joined(separator: ",")
        }
    }

    /// Mounts the FUSE connection of `device` (an open /dev/fuse) at `path`.
    public static func mount(device: FileDescriptor, at path: FilePath, options: Options) throws(FUSEError) {
        var flags = UInt(MS_NOSUID | MS_NODEV)
        if options.readOnly { flags |= UInt(MS_RDONLY) }
        let data = options.data(fd: device.rawValue, uid: geteuid(), gid: getegid())
        let result = path.withPlatformString { target in
            retryingEINTR { Glibc.mount(options.source, target, options.fileSystemType, flags, data) }
        }
        if result != 0 {
            let errno = Errno(rawValue: Glibc.errno)
            throw FUSEError(.mount, "mount \(options.fileSystemType) at \(path) failed (need root and /dev/fuse)", errno: errno, underlying: errno)
        }
    }

    /// Unmounts `path`. `lazy` detaches it (MNT_DETACH) even when busy or
    /// when its server died (the mount then answers ENOTCONN).
    public static func unmount(_ path: FilePath, lazy: Bool = false) throws(FUSEError) {
        let result = path.withPlatformString { target in
            retryingEINTR { umount2(target, lazy ? Int32(MNT_DETACH) : 0) }
        }
        if result != 0 {
            let errno = Errno(rawValue: Glibc.errno)
            throw FUSEError(.unmount, "unmount \(path) failed\(lazy ? "" : "; try lazy: true if it is busy or dead")",
                            errno: errno, underlying: errno)
        }
    }

    /// True when `path` is a FUSE mount whose connection is gone (server
    /// crashed or aborted): stat(2) or, as stat may be answered from the
    /// attribute cache, statfs(2) fails with ENOTCONN. statfs reaches a live
    /// server as a STATFS request. Clean it with `unmount(path, lazy: true)`.
    public static func isDeadMount(_ path: FilePath) -> Bool {
        var info = stat()
        let result = path.withPlatformString { stat($0, &info) }
        if result != 0 { return Glibc.errno == ENOTCONN }
        guard let mount = mountInfo(for: FUSEServer.resolved(path)), mount.fileSystemType.hasPrefix("fuse") else {
            return false
        }
        var stats = statvfs()
        let statfsResult = path.withPlatformString { statvfs($0, &stats) }
        return statfsResult != 0 && Glibc.errno == ENOTCONN
    }

    /// True when `path` is a mount point in this mount namespace.
    public static func isMounted(_ path: FilePath) -> Bool {
        mountInfo(for: path) != nil
    }

    /// One line of /proc/self/mountinfo.
    public struct MountInfo: Sendable, Hashable {
        public var major: UInt32
        public var minor: UInt32
        public var mountPoint: String
        public var fileSystemType: String
        public var source: String
        public var options: String
    }

    /// The topmost mount at `path` (an absolute, normalized path).
    public static func mountInfo(for path: FilePath) -> MountInfo? {
        guard let text = readSmallFile("/proc/self/mountinfo") else { return nil }
        let wanted = path.string
        var found: MountInfo?
        for line in text.split(separator: "\n") {
            if let info = parseMountInfoLine(Substring(line)), info.mountPoint == wanted { found = info }
        }
        return found
    }

    /// Parses one mountinfo line: `id parent major:minor root mountpoint
    /// options [optional...] - fstype source superoptions`.
    static func parseMountInfoLine(_ line: Substring) -> MountInfo? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { return nil }
        let device = fields[2].split(separator: ":")
        guard device.count == 2, let major = UInt32(device[0]), let minor = UInt32(device[1]) else { return nil }
        return MountInfo(
            major: major, minor: minor, mountPoint: unescape(fields[4]),
            fileSystemType: String(fields[dash + 1]), source: unescape(fields[dash + 2]),
            options: String(fields[5]))
    }

    /// Undoes mountinfo's octal escapes (`\040` for a space).
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
               let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { buffer in
                retryingEINTR { read(fd, buffer.baseAddress, buffer.count) }
            }
            if count < 0 { return nil }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Best effort: sets the readahead of the mount's backing device info.
    static func setReadahead(kibibytes: Int, major: UInt32, minor: UInt32) -> Bool {
        let path = "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
        let fd = retryingEINTR { open(path, O_WRONLY | O_CLOEXEC) }
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let text = Array("\(kibibytes)\n".utf8)
        let written = text.withUnsafeBytes { bytes in retryingEINTR { write(fd, bytes.baseAddress, bytes.count) } }
        return written == text.count
    }
}

/// Runs `body` again while it fails with EINTR.
@inline(__always)
func retryingEINTR<T: FixedWidthInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result == -1 && errno == EINTR { continue }
        return result
    }
}
