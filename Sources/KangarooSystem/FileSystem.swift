#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Small Foundation-free file helpers for short-lived tools such as
/// kangaroo-runtime. Paths are trusted (host paths chosen by the runtime).
public enum FileSystem {
    /// Reads a whole file.
    public static func read(_ path: String) throws(Errno) -> [UInt8] {
        let fd = try retrying { open(path, O_RDONLY | O_CLOEXEC) }
        defer { _ = Glibc.close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try retrying { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// `count` bytes at `offset` of an open file; fewer only at its end.
    public static func pread(_ fd: Int32, count: Int, at offset: UInt64) throws(Errno) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try retrying {
                out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            }
            if n == 0 { break }
            done += n
        }
        if done < count { out.removeLast(count - done) }
        return out
    }

    public static func readString(_ path: String) throws(Errno) -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// Writes `data` with one write(2) (cgroup and proc files need that).
    public static func write(_ path: String, _ data: String, flags: Int32 = O_WRONLY | O_CLOEXEC,
                             mode: mode_t = 0o644) throws(Errno) {
        try write(path, bytes: Array(data.utf8), flags: flags, mode: mode)
    }

    public static func write(_ path: String, bytes: [UInt8], flags: Int32 = O_WRONLY | O_CLOEXEC,
                             mode: mode_t = 0o644) throws(Errno) {
        let fd = try retrying { open(path, flags, mode) }
        defer { _ = Glibc.close(fd) }
        var bytes = bytes
        var off = 0
        repeat {
            let n = try retrying {
                bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            }
            off += n
        } while off < bytes.count
    }

    /// Atomically replaces `path` (write to a temporary, fsync-free rename).
    public static func replace(_ path: String, _ data: String) throws(Errno) {
        try replace(path, bytes: Array(data.utf8))
    }

    public static func replace(_ path: String, bytes: [UInt8]) throws(Errno) {
        let tmp = path + ".tmp"
        try write(tmp, bytes: bytes, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
        if rename(tmp, path) != 0 { throw Errno(rawValue: errno) }
    }

    /// Replaces `path` so that after a crash it holds either the old or the
    /// new contents: written to a temporary, fsynced, renamed, and the
    /// directory fsynced.
    public static func replaceDurably(_ path: String, _ data: String) throws(Errno) {
        let tmp = path + ".tmp"
        try write(tmp, data, flags: O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
        let fd = try retrying { open(tmp, O_RDONLY | O_CLOEXEC) }
        let synced = fsync(fd)
        _ = Glibc.close(fd)
        if synced != 0 { throw Errno(rawValue: errno) }
        if rename(tmp, path) != 0 { throw Errno(rawValue: errno) }
        var dir = path
        if let slash = dir.lastIndex(of: "/") { dir = slash == dir.startIndex ? "/" : String(dir[..<slash]) } else { dir = "." }
        let dfd = try retrying { open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        _ = fsync(dfd)
        _ = Glibc.close(dfd)
    }

    /// Runs `body` holding the exclusive flock of `path` (created 0600).
    public static func withExclusiveLock<T, E: Error>(_ path: String, _ body: () throws(E) -> T) throws(LockedError<E>) -> T {
        let lock = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw .lock(Errno(rawValue: errno)) }
        defer { Glibc.close(lock) }
        while flock(lock, LOCK_EX) != 0 {
            guard errno == EINTR else { throw .lock(Errno(rawValue: errno)) }
        }
        do { return try body() } catch { throw .body(error) }
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(Errno) {
        if mkdir(path, mode) == 0 { return }
        let e = errno
        if e == EEXIST { return }
        guard e == ENOENT else { throw Errno(rawValue: e) }
        var parent = path
        while parent.count > 1, parent.hasSuffix("/") { parent.removeLast() }
        guard let slash = parent.lastIndex(of: "/"), slash != parent.startIndex else { throw Errno(rawValue: e) }
        try makeDirectories(String(parent[..<slash]), mode: mode)
        if mkdir(path, mode) != 0, errno != EEXIST { throw Errno(rawValue: errno) }
    }

    /// Names in a directory, without "." and "..".
    public static func list(_ path: String) throws(Errno) -> [String] {
        guard let dir = opendir(path) else { throw Errno(rawValue: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// rm -rf for a directory the runtime owns (no mount points inside).
    public static func removeTree(_ path: String) {
        if unlink(path) == 0 { return }
        if errno == ENOENT { return }
        if let names = try? list(path) {
            for n in names { removeTree(path + "/" + n) }
        }
        _ = rmdir(path)
    }

    /// Retries a call while it fails with EINTR; throws errno on -1.
    @inline(__always)
    public static func retrying<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
        while true {
            let r = body()
            if r != -1 { return r }
            if errno == EINTR { continue }
            throw Errno(rawValue: errno)
        }
    }

    /// `retrying` as a Result (for closures that cannot throw typed errors).
    public static func retryingResult<T: FixedWidthInteger>(_ body: () -> T) -> Result<T, Errno> {
        do throws(Errno) { return .success(try retrying(body)) } catch { return .failure(error) }
    }
}

/// What `FileSystem.withExclusiveLock` throws: the lock's failure, or the
/// body's error.
public enum LockedError<E: Error>: Error {
    case lock(Errno)
    case body(E)
}
