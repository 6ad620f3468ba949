#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import SystemPackage

/// The calling process's mount table (/proc/self/mountinfo) and unmounting.
public enum Mounts {
    /// Mount points, in mountinfo order (parents before the mounts on them).
    public static func mountPoints() throws(Errno) -> [String] {
        parseMountPoints(try FileSystem.readString("/proc/self/mountinfo"))
    }

    /// Whether `path` is the root of a mount (statx's mount-root attribute:
    /// no read of the mount table, which is long on a busy node; the table
    /// where the kernel does not report the attribute).
    public static func isMountPoint(_ path: String) -> Bool {
        switch kr_is_mount_root(path) {
        case 1: return true
        case 0: return false
        default: return errno == ENOTSUP && (try? mountPoints())?.contains(path) == true
        }
    }

    static func parseMountPoints(_ mountinfo: String) -> [String] {
        mountinfo.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", maxSplits: 5)
            return fields.count > 4 ? CgroupLayout.unescape(String(fields[4])) : nil
        }
    }

    /// Detaches (MNT_DETACH) every mount at or below any of `paths`, deepest
    /// and newest first, including mounts stacked on one another. Returns the
    /// mount points it could not detach.
    @discardableResult
    public static func detachAll(under paths: [String]) -> [String] {
        // The common case without reading mountinfo (the daemon unmounts a
        // rootfs per container, and mountinfo grows with the containers):
        // a lazy unmount of a mount point takes every mount below it along,
        // so detaching each path until it is no mount point any more
        // leaves nothing, unless something was mounted below a path that
        // is not itself a mount point (then the scan below finds it).
        var clean = true
        for p in paths {
            var n = 0
            while n < 64, umount2(p, Int32(MNT_DETACH)) == 0 { n += 1 }
            if n == 0 || n == 64 || (errno != EINVAL && errno != ENOENT) { clean = false }
        }
        if clean { return [] }
        return detachScanning(under: paths)
    }

    static func detachScanning(under paths: [String]) -> [String] {
        func below(_ mp: String) -> Bool {
            paths.contains { p in mp == p || mp.hasPrefix(p.hasSuffix("/") ? p : p + "/") }
        }
        var failed: [String] = []
        for _ in 0..<64 {
            guard let points = try? mountPoints() else { break }
            let targets = points.filter(below).filter { !failed.contains($0) }
            if targets.isEmpty { break }
            for mp in targets.reversed() where umount2(mp, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                failed.append(mp)
            }
        }
        return failed
    }
}
