#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

/// Small typed wrappers over the file syscalls KangarooOCI needs.
enum FileIO {
    static func ioError(_ what: String, _ path: FilePath, _ errno: Errno) -> OCIError {
        if errno == .noSuchFileOrDirectory {
            return OCIError(.notFound, "\(what) '\(path)': no such file or directory", underlying: errno)
        }
        return OCIError(.io, "\(what) '\(path)' failed: \(errno)", underlying: errno)
    }

    static func open(_ path: FilePath, _ mode: FileDescriptor.AccessMode,
                     options: FileDescriptor.OpenOptions = [], permissions: FilePermissions? = nil) throws(OCIError) -> FileDescriptor {
        do {
            return try FileDescriptor.open(path, mode, options: options.union(.closeOnExec),
                                           permissions: permissions, retryOnInterrupt: true)
        } catch let e as Errno {
            throw ioError("open", path, e)
        } catch {
            throw OCIError(.io, "open '\(path)' failed", underlying: Errno(rawValue: 0))
        }
    }

    static func readAll(_ path: FilePath, limit: Int = 64 << 20) throws(OCIError) -> [UInt8] {
        let fd = try open(path, .readOnly)
        defer { try? fd.close() }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n: Int
            do { n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) } } catch {
                throw ioError("read", path, error as? Errno ?? .ioError)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[..<n])
            if out.count > limit {
                throw OCIError(.io, "'\(path)' is larger than the \(limit) bytes allowed for it")
            }
        }
        return out
    }

    static func writeAll(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, path: FilePath) throws(OCIError) {
        do { _ = try fd.writeAll(bytes) } catch {
            throw ioError("write", path, error as? Errno ?? .ioError)
        }
    }

    static func fsync(_ fd: FileDescriptor, path: FilePath) throws(OCIError) {
        while Glibc.fsync(fd.rawValue) != 0 {
            if errno == EINTR { continue }
            throw ioError("fsync", path, Errno(rawValue: errno))
        }
    }

    /// fsync of a directory so a rename in it is durable.
    static func syncDirectory(_ path: FilePath) {
        guard let fd = try? open(path, .readOnly, options: [.directory]) else { return }
        _ = Glibc.fsync(fd.rawValue)
        try? fd.close()
    }

    static func rename(_ from: FilePath, _ to: FilePath) throws(OCIError) {
        if Glibc.rename(from.string, to.string) != 0 {
            throw ioError("rename to '\(to)' of", from, Errno(rawValue: errno))
        }
    }

    static func unlink(_ path: FilePath) {
        _ = Glibc.unlink(path.string)
    }

    static func exists(_ path: FilePath) -> Bool {
        var st = stat()
        return stat(path.string, &st) == 0
    }

    static func isRegularFile(_ path: FilePath) -> Bool {
        var st = stat()
        return stat(path.string, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    static func mkdirs(_ path: FilePath) throws(OCIError) {
        if path.isEmpty || exists(path) { return }
        let parent = path.removingLastComponent()
        if parent != path, !parent.isEmpty { try mkdirs(parent) }
        if mkdir(path.string, 0o755) != 0, errno != EEXIST {
            throw ioError("mkdir", path, Errno(rawValue: errno))
        }
    }

    /// Names in a directory (without `.` and `..`).
    static func list(_ path: FilePath) -> [String] {
        guard let dir = opendir(path.string) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// flock wrapper; returns false for `nonBlocking` when the lock is held elsewhere.
    @discardableResult
    static func flock(_ fd: FileDescriptor, exclusive: Bool = true, nonBlocking: Bool = false, path: FilePath) throws(OCIError) -> Bool {
        var op = exclusive ? LOCK_EX : LOCK_SH
        if nonBlocking { op |= LOCK_NB }
        let cFlock: (Int32, Int32) -> Int32 = Glibc.flock(_:_:)
        while cFlock(fd.rawValue, op) != 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK && nonBlocking { return false }
            throw ioError("flock", path, Errno(rawValue: errno))
        }
        return true
    }

    static func fileSize(_ fd: FileDescriptor) -> Int64? {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        return Int64(st.st_size)
    }
}
