#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

extension FUSEMount {
    static let controlDirectory = "/sys/fs/fuse/connections"

    /// Aborts the FUSE connection behind the mount at `path` through fusectl
    /// (`/sys/fs/fuse/connections/<minor>/abort`), as if its server died:
    /// pending and later requests fail with ENOTCONN and the server's
    /// workers stop. Mounts fusectl for the duration if it is not mounted.
    public static func abortConnection(_ path: FilePath) throws(FUSEError) {
        guard let info = mountInfo(for: FUSEServer.resolved(path)), info.fileSystemType.hasPrefix("fuse") else {
            throw FUSEError(.unmount, "\(path) is not a FUSE mount", errno: .invalidArgument)
        }
        var mountedControl = false
        if !isMounted(FilePath(controlDirectory)) {
            if Glibc.mount("fusectl", controlDirectory, "fusectl", 0, nil) != 0 {
                let errno = Errno(rawValue: Glibc.errno)
                throw FUSEError(.mount, "cannot mount fusectl at \(controlDirectory)", errno: errno, underlying: errno)
            }
            mountedControl = true
        }
        defer { if mountedControl { umount2(controlDirectory, Int32(MNT_DETACH)) } }
        let abortPath = "\(controlDirectory)/\(info.minor)/abort"
        let fd = retryingEINTR { open(abortPath, O_WRONLY | O_CLOEXEC) }
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw FUSEError(.unmount, "cannot open \(abortPath)", errno: errno, underlying: errno)
        }
        defer { close(fd) }
        if retryingEINTR({ write(fd, "1", 1) }) != 1 {
            let errno = Errno(rawValue: Glibc.errno)
            throw FUSEError(.unmount, "writing \(abortPath) failed", errno: errno, underlying: errno)
        }
    }
}

extension FUSEServer {
    /// Stops at once: aborts the connection (requests in flight fail with
    /// ENOTCONN for their callers at once), waits for the workers, and
    /// removes the mount. For shutdown when `stop()` would wait on busy
    /// users or on a filesystem call that hangs; note a worker inside a
    /// filesystem call exits only when that call returns. A no-op when not
    /// running.
    public func abort() throws(FUSEError) {
        guard let latch = runningLatch else { return }
        if !latch.isDone {
            try FUSEMount.abortConnection(configuration.mountPoint)
        }
        latch.wait()
        try stop()
    }
}
