#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import SystemPackage

/// Unix stream sockets by path (close-on-exec), and descriptors passed over
/// them (SCM_RIGHTS): console sockets, the FUSE device handed to a new
/// server.
public enum UnixSocket {
    /// A connected socket to `path`.
    public static func connect(_ path: String) throws(Errno) -> Int32 {
        let fd = try FileSystem.retrying { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(Errno) {
            _ = try withAddress(path) { address, length throws(Errno) in try FileSystem.retrying { Glibc.connect(fd, address, length) } }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A listening socket bound at `path` (a stale socket file there is
    /// replaced), mode 0600.
    public static func listen(_ path: String, backlog: Int32 = 16) throws(Errno) -> Int32 {
        let fd = try FileSystem.retrying { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(Errno) {
            unlink(path)
            _ = try withAddress(path) { address, length throws(Errno) in try FileSystem.retrying { bind(fd, address, length) } }
            _ = try FileSystem.retrying { chmod(path, 0o600) }
            _ = try FileSystem.retrying { Glibc.listen(fd, backlog) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        return fd
    }

    /// Accepts one connection on `listener`, waiting at most `timeoutMs`
    /// (ETIMEDOUT after).
    public static func accept(_ listener: Int32, timeoutMs: Int32) throws(Errno) -> Int32 {
        try waitReadable(listener, timeoutMs: timeoutMs)
        let fd = try FileSystem.retrying { Glibc.accept(listener, nil, nil) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Waits until `fd` is readable (or hung up), at most `timeoutMs`.
    public static func waitReadable(_ fd: Int32, timeoutMs: Int32) throws(Errno) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = try FileSystem.retrying { poll(&p, 1, timeoutMs) }
        if n == 0 { throw Errno.timedOut }
    }

    /// Sends `descriptor` (with one byte) over the connected `socket`.
    public static func send(descriptor: Int32, over socket: Int32) throws(Errno) {
        let rc = kr_send_fd(socket, descriptor)
        if rc < 0 { throw Errno(rawValue: -rc) }
    }

    /// Receives one descriptor (close-on-exec) sent over `socket`.
    public static func receiveDescriptor(_ socket: Int32) throws(Errno) -> Int32 {
        let fd = kr_recv_fd(socket)
        if fd < 0 { throw Errno(rawValue: -fd) }
        return fd
    }

    private static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(Errno) -> T) throws(Errno) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw Errno.fileNameTooLong }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return try withUnsafePointer(to: &address) { (pointer: UnsafePointer<sockaddr_un>) throws(Errno) -> T in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (p: UnsafePointer<sockaddr>) throws(Errno) -> T in
                try body(p, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
