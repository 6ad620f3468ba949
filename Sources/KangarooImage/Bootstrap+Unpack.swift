import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension Bootstrap {
    /// Writes the tree into `path` (an empty or new directory). Every file is
    /// created relative to an open directory fd with O_NOFOLLOW / *at(…,
    /// AT_SYMLINK_NOFOLLOW); symlinks of the image are never followed.
    /// Ownership, xattrs and setuid bits need root to be reproduced exactly.
    public func unpack(to path: String, source: any ChunkSource) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw ImageError(.invalidArgument, "'\(path)' exists and is not a directory") }
            let contents = try FileManager.default.contentsOfDirectory(atPath: path)
            guard contents.isEmpty else { throw ImageError(.invalidArgument, "'\(path)' is not empty") }
        } else if mkdir(path, 0o700) != 0 {
            throw POSIX.errnoError("mkdir '\(path)'")
        }
        let rootFD = try POSIX.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        defer { POSIX.close(rootFD) }
        var unpacker = Unpacker(bootstrap: self, source: source, rootFD: rootFD)
        let root = try inode(rootNid)
        try unpacker.directory(fd: rootFD, inode: root, path: [], depth: 0)
        try unpacker.finishNode(fd: rootFD, inode: root, isDirectory: true)
    }
}

private struct Unpacker {
    let bootstrap: Bootstrap
    let source: any ChunkSource
    let rootFD: Int32
    /// nid -> first path, for hard links.
    var firstPath: [UInt64: [String]] = [:]
    var seenDirs: Set<UInt64> = []

    init(bootstrap: Bootstrap, source: any ChunkSource, rootFD: Int32) {
        self.bootstrap = bootstrap
        self.source = source
        self.rootFD = rootFD
    }

    mutating func directory(fd: Int32, inode: ImageInode, path: [String], depth: Int) throws {
        guard depth < 4096, seenDirs.insert(inode.nid).inserted else { throw ImageError.corrupt("directory cycle at /\(path.joined(separator: "/"))") }
        for entry in try bootstrap.children(inode) {
            let child = try bootstrap.inode(entry.nid)
            let name = entry.name
            let childPath = path + [name]
            if child.kind != .directory, let first = firstPath[child.nid] {
                let parentFD = try openDirectory(Array(first.dropLast()))
                defer { if parentFD != rootFD { POSIX.close(parentFD) } }
                guard linkat(parentFD, first[first.count - 1], fd, name, 0) == 0 else { throw POSIX.errnoError("link '\(childPath.joined(separator: "/"))'") }
                continue
            }
            if child.nlink > 1 && child.kind != .directory { firstPath[child.nid] = childPath }
            switch child.kind {
            case .directory:
                guard mkdirat(fd, name, 0o700) == 0 else { throw POSIX.errnoError("mkdir '\(childPath.joined(separator: "/"))'") }
                let sub = try POSIX.openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                defer { POSIX.close(sub) }
                try directory(fd: sub, inode: child, path: childPath, depth: depth + 1)
                try finishNode(fd: sub, inode: child, isDirectory: true)
            case .regular:
                let file = try POSIX.openat(fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
                defer { POSIX.close(file) }
                let map = try bootstrap.chunkMap(child)
                let cs = UInt64(bootstrap.chunkSize)
                for (c, location) in map.enumerated() {
                    guard let location else { continue }
                    guard let index = bootstrap.extensionRegion.chunkIndex(at: location) else {
                        throw ImageError.corrupt("chunk \(c) of /\(childPath.joined(separator: "/")) is not in the ToC")
                    }
                    var data = try bootstrap.readChunk(index, source: source)
                    let want = Int(min(cs, child.size - UInt64(c) * cs))
                    if data.count > want { data.removeSubrange(want...) }
                    try POSIX.pwriteAll(file, data, at: UInt64(c) * cs)
                }
                try POSIX.ftruncate(file, child.size)
                try finishNode(fd: file, inode: child, isDirectory: false)
            case .symlink:
                guard symlinkat(try bootstrap.readlink(child), fd, name) == 0 else { throw POSIX.errnoError("symlink '\(childPath.joined(separator: "/"))'") }
                try finishAt(dir: fd, name: name, inode: child, chmod: false)
            case .characterDevice, .blockDevice, .fifo, .socket:
                let (major, minor) = child.device
                let isDev = child.kind == .characterDevice || child.kind == .blockDevice
                let dev: dev_t = isDev ? Self.makedev(major, minor) : 0
                guard mknodat(fd, name, mode_t(child.mode & EROFS.sIFMT) | 0o600, dev) == 0 else {
                    throw POSIX.errnoError("mknod '\(childPath.joined(separator: "/"))'")
                }
                try finishAt(dir: fd, name: name, inode: child, chmod: true)
            }
        }
    }

    static func makedev(_ major: UInt32, _ minor: UInt32) -> dev_t {
        let ma = UInt64(major), mi = UInt64(minor)
        return dev_t(((ma & 0xFFFF_F000) << 32) | ((ma & 0xFFF) << 8) | ((mi & 0xFFFF_FF00) << 12) | (mi & 0xFF))
    }

    /// Opens a directory we created, by components, never following symlinks.
    func openDirectory(_ components: [String]) throws -> Int32 {
        var fd = rootFD
        for part in components {
            let next = try POSIX.openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            if fd != rootFD { POSIX.close(fd) }
            fd = next
        }
        return fd
    }

    /// Owner, xattrs, mode (after chown so setuid bits survive), mtime, on an open fd.
    func finishNode(fd: Int32, inode: ImageInode, isDirectory: Bool) throws {
        guard fchown(fd, inode.uid, inode.gid) == 0 else { throw POSIX.errnoError("chown inode \(inode.nid)") }
        for (name, value) in try bootstrap.xattrs(inode) { try POSIX.fsetxattr(fd, name, value) }
        guard fchmod(fd, mode_t(inode.permissions)) == 0 else { throw POSIX.errnoError("chmod inode \(inode.nid)") }
        var times = [timespec(tv_sec: Int(inode.mtimeSeconds), tv_nsec: Int(inode.mtimeNanoseconds)),
                     timespec(tv_sec: Int(inode.mtimeSeconds), tv_nsec: Int(inode.mtimeNanoseconds))]
        guard futimens(fd, &times) == 0 else { throw POSIX.errnoError("utimens inode \(inode.nid)") }
    }

    /// The same for entries we must not open (symlinks, devices, fifos, sockets).
    func finishAt(dir: Int32, name: String, inode: ImageInode, chmod: Bool) throws {
        guard fchownat(dir, name, inode.uid, inode.gid, AT_SYMLINK_NOFOLLOW) == 0 else { throw POSIX.errnoError("chown '\(name)'") }
        let procPath = "/proc/self/fd/\(dir)/\(name)"
        for (xname, value) in try bootstrap.xattrs(inode) { try POSIX.lsetxattr(procPath, xname, value) }
        if chmod {
            guard fchmodat(dir, name, mode_t(inode.permissions), 0) == 0 else { throw POSIX.errnoError("chmod '\(name)'") }
        }
        var times = [timespec(tv_sec: Int(inode.mtimeSeconds), tv_nsec: Int(inode.mtimeNanoseconds)),
                     timespec(tv_sec: Int(inode.mtimeSeconds), tv_nsec: Int(inode.mtimeNanoseconds))]
        guard utimensat(dir, name, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw POSIX.errnoError("utimens '\(name)'") }
    }
}
