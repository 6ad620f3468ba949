#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Thin EINTR-retrying wrappers over the few syscalls the cache uses; errors
/// become `LazyFSError` carrying the errno.
enum Sys {
    static func errno(_ what: String, code: LazyFSError.Code = .cache) -> LazyFSError {
        let e = Errno(rawValue: Glibc.errno)
        return LazyFSError(code, "\(what) failed: \(e)", underlying: e)
    }

    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) throws(LazyFSError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if Glibc.errno != EINTR { throw errno("open \(path)") }
        }
    }

    static func close(_ fd: Int32) { _ = Glibc.close(fd) }  // never retried

    static func pwriteAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64, what: String) throws(LazyFSError) {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw errno("writing \(what)")
            }
            done += n
        }
    }

    /// Reads up to `buffer.count` bytes at `offset`; fewer only at end of file.
    static func preadFull(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, what: String) throws(LazyFSError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw errno("reading \(what)")
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    static func pwriteAll(_ fd: Int32, bytes: [UInt8], at offset: UInt64, what: String) throws(LazyFSError) {
        let failed: Bool = bytes.withUnsafeBytes { buffer in
            do { try pwriteAll(fd, buffer, at: offset, what: what); return false } catch { return true }
        }
        if failed { throw errno("writing \(what)") }
    }

    static func preadFull(_ fd: Int32, into bytes: inout [UInt8], at offset: UInt64, what: String) throws(LazyFSError) -> Int {
        let n: Int = bytes.withUnsafeMutableBytes { buffer in
            (try? preadFull(fd, buffer, at: offset, what: what)) ?? -1
        }
        if n < 0 { throw errno("reading \(what)") }
        return n
    }

    static func fdatasync(_ fd: Int32, what: String) throws(LazyFSError) {
        while Glibc.fdatasync(fd) != 0 {
            if Glibc.errno != EINTR { throw errno("fdatasync \(what)") }
        }
    }

    static func fileSize(_ fd: Int32) throws(LazyFSError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw errno("fstat") }
        return UInt64(st.st_size)
    }

    static func ftruncate(_ fd: Int32, _ size: UInt64, what: String) throws(LazyFSError) {
        while Glibc.ftruncate(fd, off_t(size)) != 0 {
            if Glibc.errno != EINTR { throw errno("truncating \(what)") }
        }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func mkdirs(_ path: String) throws(LazyFSError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && Glibc.errno != EEXIST { throw errno("mkdir \(current)") }
        }
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
