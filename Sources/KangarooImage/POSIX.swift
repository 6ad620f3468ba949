#if canImport(Glibc)
import Glibc
#endif

/// Minimal typed wrappers over the file syscalls the image code needs;
/// EINTR is retried, close never is.
enum POSIX {
    static func errnoError(_ what: String) -> ImageError {
        let code = errno
        return ImageError(.io, "\(what): \(String(cString: strerror(code))) (errno \(code))")
    }

    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) throws(ImageError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw errnoError("open '\(path)'") }
        }
    }

    static func openat(_ dir: Int32, _ name: String, _ flags: Int32, _ mode: mode_t = 0) throws(ImageError) -> Int32 {
        while true {
            let fd = Glibc.openat(dir, name, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw errnoError("openat '\(name)'") }
        }
    }

    static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    // <sys/xattr.h> is not part of the Glibc module map: resolve the libc symbols once.
    private typealias FSetXattr = @convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    private typealias LSetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    private static let fsetxattrFunction: FSetXattr? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fsetxattr").map { unsafeBitCast($0, to: FSetXattr.self) }
    private static let lsetxattrFunction: LSetXattr? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "lsetxattr").map { unsafeBitCast($0, to: LSetXattr.self) }

    private typealias LListXattr = @convention(c) (UnsafePointer<CChar>, UnsafeMutablePointer<CChar>?, Int) -> Int
    private typealias LGetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    private static let llistxattrFunction: LListXattr? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "llistxattr").map { unsafeBitCast($0, to: LListXattr.self) }
    private static let lgetxattrFunction: LGetXattr? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "lgetxattr").map { unsafeBitCast($0, to: LGetXattr.self) }

    /// All xattrs of `path` (not following a final symlink), sorted by name.
    static func lxattrs(_ path: String) throws(ImageError) -> [String: [UInt8]] {
        guard let list = llistxattrFunction, let get = lgetxattrFunction else { throw ImageError(.unsupported, "xattr calls are not available") }
        var names = [CChar](repeating: 0, count: 65536)
        let n = list(path, &names, names.count)
        guard n >= 0 else { throw errnoError("llistxattr '\(path)'") }
        var out: [String: [UInt8]] = [:]
        for raw in names[0..<n].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var value = [UInt8](repeating: 0, count: 65536)
            let v = value.withUnsafeMutableBytes { get(path, name, $0.baseAddress, $0.count) }
            guard v >= 0 else { throw errnoError("lgetxattr \(name) on '\(path)'") }
            out[name] = Array(value[0..<v])
        }
        return out
    }

    static func fsetxattr(_ fd: Int32, _ name: String, _ value: [UInt8]) throws(ImageError) {
        guard let f = fsetxattrFunction else { throw ImageError(.unsupported, "fsetxattr is not available") }
        let rc = value.withUnsafeBytes { f(fd, name, $0.baseAddress, $0.count, 0) }
        guard rc == 0 else { throw errnoError("setxattr \(name)") }
    }

    static func lsetxattr(_ path: String, _ name: String, _ value: [UInt8]) throws(ImageError) {
        guard let f = lsetxattrFunction else { throw ImageError(.unsupported, "lsetxattr is not available") }
        let rc = value.withUnsafeBytes { f(path, name, $0.baseAddress, $0.count, 0) }
        guard rc == 0 else { throw errnoError("lsetxattr \(name) on '\(path)'") }
    }

    static func pwriteAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(ImageError) {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let n = Glibc.pwrite(fd, base + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw errnoError("write")
            }
            done += n
        }
    }

    static func pwriteAll(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64) throws(ImageError) {
        let outcome = bytes.withUnsafeBytes { b in Result { () throws(ImageError) in try pwriteAll(fd, b, at: offset) } }
        try outcome.get()
    }

    static func preadExact(_ fd: Int32, count: Int, at offset: UInt64) throws(ImageError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        var failure: ImageError?
        out.withUnsafeMutableBytes { b in
            guard let base = b.baseAddress else { return }
            while done < count {
                let n = Glibc.pread(fd, base + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errnoError("read")
                    return
                }
                if n == 0 {
                    failure = ImageError(.io, "unexpected end of file at offset \(offset + UInt64(done))")
                    return
                }
                done += n
            }
        }
        if let failure { throw failure }
        return out
    }

    static func ftruncate(_ fd: Int32, _ size: UInt64) throws(ImageError) {
        while Glibc.ftruncate(fd, off_t(size)) != 0 {
            if errno != EINTR { throw errnoError("ftruncate") }
        }
    }

    static func fsync(_ fd: Int32) throws(ImageError) {
        while Glibc.fsync(fd) != 0 {
            if errno != EINTR { throw errnoError("fsync") }
        }
    }

    static func fileSize(_ fd: Int32) throws(ImageError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw errnoError("fstat") }
        return UInt64(st.st_size)
    }

    static func readFile(_ path: String) throws(ImageError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        return try preadExact(fd, count: Int(try fileSize(fd)), at: 0)
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws(ImageError) {
        let fd = try open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(fd) }
        try pwriteAll(fd, bytes, at: 0)
    }
}
