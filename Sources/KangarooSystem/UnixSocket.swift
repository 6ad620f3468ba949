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

    /// Waits until `count` bytes can be read from the blocking stream
    /// `socket` and copies them into `buffer` without consuming them
    /// (MSG_PEEK). False at end of stream (or when the peer is gone with
    /// fewer bytes sent). A peek never waits for more than the first byte,
    /// so the rest of a frame that comes in pieces is waited for in short
    /// sleeps (a request a writer sends in one piece needs none).
    public static func peek(_ socket: Int32, into buffer: UnsafeMutableRawBufferPointer, count: Int) throws(Errno) -> Bool {
        precondition(count <= buffer.count)
        while true {
            let n = try FileSystem.retrying { recv(socket, buffer.baseAddress, count, Int32(MSG_PEEK)) }
            if n == 0 { return false }
            if n >= count { return true }
            var p = pollfd(fd: socket, events: Int16(POLLIN) | 0x2000 /* POLLRDHUP */, revents: 0)
            _ = poll(&p, 1, 0)
            if p.revents & (0x2000 | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                // The peer is gone: what it sent is all there will be.
                let again = try FileSystem.retrying { recv(socket, buffer.baseAddress, count, Int32(MSG_PEEK)) }
                if again < count { return false }
                return true
            }
            usleep(200)
        }
    }

    /// Reads exactly `count` bytes from `socket` into `buffer` (already
    /// peeked: they are there).
    public static func receive(_ socket: Int32, into buffer: UnsafeMutableRawBufferPointer, count: Int) throws(Errno) {
        precondition(count <= buffer.count)
        var got = 0
        while got < count {
            let n = try FileSystem.retrying { recv(socket, buffer.baseAddress! + got, count - got, Int32(MSG_WAITALL)) }
            if n == 0 { throw Errno.connectionReset }
            got += n
        }
    }

    /// Writes all of `bytes` to the blocking stream `socket` (no SIGPIPE).
    public static func sendAll(_ socket: Int32, _ bytes: [UInt8]) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            let n = try bytes.withUnsafeBytes { b in
                FileSystem.retryingResult { Glibc.send(socket, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }.get()
            offset += n
        }
    }

    /// Makes `fd` blocking (a descriptor handed over from an event loop's
    /// owner shares its file status flags).
    public static func setBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && flags & O_NONBLOCK != 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
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
