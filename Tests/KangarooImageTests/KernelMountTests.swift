import Foundation
import KangarooOCI
import Testing
@testable import KangarooImage
#if canImport(Glibc)
import Glibc
#endif

let integrationEnabled = ProcessInfo.processInfo.environment["KANGAROO_INTEGRATION"] == "1" && getuid() == 0

/// lstat-based view of a real directory tree, comparable with `snapshot(_:source:)`.
func kernelSnapshot(_ root: String, hashLimit: UInt64 = 64 << 20) throws -> [String: Snap] {
    var out: [String: Snap] = [:]
    func visit(_ rel: String) throws {
        let full = rel.isEmpty ? root : root + "/" + rel
        var st = stat()
        guard lstat(full, &st) == 0 else { throw ImageError(.io, "lstat \(full) failed") }
        let fmt = st.st_mode & S_IFMT
        let type: String
        switch fmt {
        case S_IFDIR: type = "directory"
        case S_IFREG: type = "regular"
        case S_IFLNK: type = "symlink"
        case S_IFCHR: type = "characterDevice"
        case S_IFBLK: type = "blockDevice"
        case S_IFIFO: type = "fifo"
        default: type = "socket"
        }
        var s = Snap(type: type, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid, size: fmt == S_IFDIR ? 0 : UInt64(st.st_size),
                     mtime: Int64(st.st_mtim.tv_sec), nsec: UInt32(st.st_mtim.tv_nsec), nlink: UInt32(st.st_nlink), target: nil, rdev: nil,
                     xattrs: try POSIX.lxattrs(full), sha: nil)
        switch fmt {
        case S_IFLNK:
            var buf = [CChar](repeating: 0, count: 8192)
            let r = readlink(full, &buf, buf.count)
            s.target = String(decoding: buf[0..<max(0, r)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        case S_IFCHR, S_IFBLK:
            let dev = UInt64(st.st_rdev)
            let major = UInt32(((dev >> 32) & 0xFFFF_F000) | ((dev >> 8) & 0xFFF))
            let minor = UInt32(((dev >> 12) & 0xFFFF_FF00) | (dev & 0xFF))
            s.rdev = EROFS.encodeDev(major: major, minor: minor)
        case S_IFREG:
            if s.size <= hashLimit {
                s.sha = Digest.sha256(of: [UInt8](try Data(contentsOf: URL(fileURLWithPath: full)))).encoded
            }
        default: break
        }
        out[rel] = s
        if fmt == S_IFDIR {
            for name in try FileManager.default.contentsOfDirectory(atPath: full).sorted() {
                try visit(rel.isEmpty ? name : rel + "/" + name)
            }
        }
    }
    try visit("")
    return out
}

@Suite(.serialized) struct KernelMountTests {
    @Test(.enabled(if: integrationEnabled, "needs root and KANGAROO_INTEGRATION=1"))
    func kernelMountMatchesImage() throws {
        let dir = try TempDir()
        let built = try build([RoundTripTests.everyKind()], in: dir)
        let b = built.bootstrap
        var expected = try snapshot(b, source: built.source)
        // The 5 GiB sparse file is not hashed; its ends are read below.
        expected["sparse/huge"]?.sha = nil

        let files = try b.materialize(to: dir.path + "/m", source: built.source)
        let mnt = dir.path + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let rc = mount(files.bootstrapPath, mnt, "erofs", UInt(MS_RDONLY), files.mountOptions)
        try #require(rc == 0, "mount failed: \(String(cString: strerror(errno)))")
        defer { umount2(mnt, Int32(MNT_DETACH)) }

        let kernel = try kernelSnapshot(mnt, hashLimit: 64 << 20)
        #expect(Set(kernel.keys) == Set(expected.keys))
        for (path, want) in expected {
            #expect(kernel[path] == want, "\(path): kernel \(kernel[path]?.description ?? "missing") vs image \(want)")
        }
        // Hard links share an inode in the kernel view.
        var s1 = stat(), s2 = stat()
        _ = lstat(mnt + "/big/text", &s1)
        _ = lstat(mnt + "/big/link", &s2)
        #expect(s1.st_ino == s2.st_ino)
        // Both ends of the 5 GiB sparse file.
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: mnt + "/sparse/huge"))
        #expect([UInt8](try h.read(upToCount: 6) ?? Data()) == Array("head".utf8) + [0, 0])
        try h.seek(toOffset: (5 << 30) - 8)
        #expect([UInt8](try h.read(upToCount: 8) ?? Data()) == [0, 0, 0, 0] + Array("tail".utf8))
        try h.close()

        // unpack produces the same tree as the kernel shows (directory sizes aside).
        let unpacked = dir.path + "/unpacked"
        try b.unpack(to: unpacked, source: built.source)
        let mine = try kernelSnapshot(unpacked, hashLimit: 64 << 20)
        #expect(Set(mine.keys) == Set(kernel.keys))
        for (path, want) in kernel {
            #expect(mine[path] == want, "\(path): unpack \(mine[path]?.description ?? "missing") vs kernel \(want)")
        }
        var sparse = stat()
        _ = lstat(unpacked + "/sparse/huge", &sparse)
        #expect(sparse.st_blocks < 1024, "unpacked sparse file is not sparse (\(sparse.st_blocks) blocks)")
    }
}
