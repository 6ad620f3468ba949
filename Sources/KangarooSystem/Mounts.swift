#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// The calling process's mount table (/proc/self/mountinfo) and unmounting.
public enum Mounts {
    /// Mount points, in mountinfo order (parents before the mounts on them).
    public static func mountPoints() throws(Errno) -> [String] {
        parseMountPoints(try FileSystem.readString("/proc/self/mountinfo"))
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
