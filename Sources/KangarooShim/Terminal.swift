import Foundation
import KangarooSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A process's terminal: the pty master its init sent over a console
/// socket, relayed to and from containerd's fifos (stdin → master, master →
/// stdout) by two threads, and resized on ResizePty.
final class Terminal: Sendable {
    let master: Int32
    private let stdinFD: Int32
    private let stdoutFD: Int32
    /// Where copies of the three descriptors are kept outside this process
    /// (the node supervisor), and this terminal's name there, so that the
    /// pty and containerd's fifos outlive a daemon crash: kept before the
    /// relays start, released once the output relay has ended (containerd
    /// waits for the fifo's EOF before it deletes the task, and a kept copy
    /// would hold it back).
    private let keeper: (TaskService.ConsoleKeeper, name: String)?
    private let stopping = Atomic<Bool>(false)
    private let outputDone = DispatchSemaphore(value: 0)
    private let stdinDone = DispatchSemaphore(value: 0)
    private let closed = Mutex(false)

    /// A console socket for one process: a listening socket the runtime
    /// connects to, closed and removed by `receive` or `discard`.
    final class Socket: Sendable {
        let path: String
        private let fd: Mutex<Int32>

        init(directory: String) throws(ShimError) {
            path = directory + "/console-\(UUID().uuidString.prefix(12)).sock"
            do { fd = Mutex(try UnixSocket.listen(path, backlog: 1)) } catch {
                throw ShimError(.internalError, "console socket \(path): \(error)")
            }
        }

        /// The pty master the container's init sent (it connects while the
        /// runtime creates the process).
        func receive(what: String) throws(ShimError) -> Int32 {
            let listener = fd.withLock { $0 }
            defer { discard() }
            do {
                let connection = try UnixSocket.accept(listener, timeoutMs: 10_000)
                defer { Glibc.close(connection) }
                try UnixSocket.waitReadable(connection, timeoutMs: 10_000)
                return try UnixSocket.receiveDescriptor(connection)
            } catch {
                throw ShimError(.internalError, "\(what): no terminal from the container's init: \(error)")
            }
        }

        func discard() {
            fd.withLock { fd in
                guard fd >= 0 else { return }
                Glibc.close(fd)
                unlink(path)
                fd = -1
            }
        }
    }

    /// Starts relaying between `master` and containerd's fifos `stdin`
    /// and `stdout` (empty: none). Takes `master`.
    convenience init(master: Int32, stdin: String, stdout: String, what: String,
                     keeper: (TaskService.ConsoleKeeper, name: String)? = nil) throws(ShimError) {
        var inFD: Int32 = -1, outFD: Int32 = -1
        if !stdin.isEmpty {
            inFD = open(stdin, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            guard inFD >= 0 else {
                let e = errno
                Glibc.close(master)
                throw ShimError(.invalidArgument, "\(what): open \(stdin): \(String(cString: strerror(e)))")
            }
        }
        if !stdout.isEmpty {
            outFD = open(stdout, O_RDWR | O_CLOEXEC)
            guard outFD >= 0 else {
                let e = errno
                Glibc.close(master)
                if inFD >= 0 { Glibc.close(inFD) }
                throw ShimError(.invalidArgument, "\(what): open \(stdout): \(String(cString: strerror(e)))")
            }
        }
        self.init(master: master, stdinFD: inFD, stdoutFD: outFD, keeper: keeper)
    }

    /// Relays between descriptors already open (-1: none), as a restarted
    /// daemon gets them back from its supervisor. Takes all three.
    init(master: Int32, stdinFD: Int32, stdoutFD: Int32, keeper: (TaskService.ConsoleKeeper, name: String)? = nil) {
        self.master = master
        self.stdinFD = stdinFD
        self.stdoutFD = stdoutFD
        self.keeper = keeper
        if let (k, name) = keeper { k.keep(name, master, stdinFD, stdoutFD) }
        Thread.detachNewThread { [self] in relayOutput() }
        if stdinFD >= 0 { Thread.detachNewThread { [self] in relayInput() } } else { stdinDone.signal() }
    }

    /// master → stdout until the last holder of the pty's other side is
    /// gone (EIO) or `close` (polled, so that `close` ends a read that
    /// would wait for a stray holder of the pty).
    private func relayOutput() {
        var buffer = [UInt8](repeating: 0, count: 32 * 1024)
        loop: while !stopping.load(ordering: .relaxed) {
            var p = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 200)
            if ready < 0 && errno != EINTR { break }
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { break }
            guard stdoutFD >= 0 else { continue }
            var offset = 0
            while offset < n {
                let w = buffer.withUnsafeBytes { write(stdoutFD, $0.baseAddress! + offset, n - offset) }
                if w < 0 { if errno == EINTR { continue }; break loop }
                offset += w
            }
        }
        if stdoutFD >= 0 { Glibc.close(stdoutFD) }
        if let (k, name) = keeper { k.release(name) }
        outputDone.signal()
    }

    /// stdin → master until containerd closes its writer or `close`. The
    /// fifo is polled (a reader without a writer yet reads EOF; POLLHUP
    /// only comes once a writer has been and gone).
    private func relayInput() {
        var buffer = [UInt8](repeating: 0, count: 32 * 1024)
        while !stopping.load(ordering: .relaxed) {
            var p = pollfd(fd: stdinFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 200)
            if ready < 0 && errno != EINTR { break }
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(stdinFD, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; break }
            if n == 0 { if p.revents & Int16(POLLHUP) != 0 { break }; continue }
            var offset = 0
            while offset < n {
                let w = buffer.withUnsafeBytes { write(master, $0.baseAddress! + offset, n - offset) }
                if w < 0 { if errno == EINTR { continue }; break }
                offset += w
            }
        }
        Glibc.close(stdinFD)
        stdinDone.signal()
    }

    /// TIOCSWINSZ on the master.
    func resize(width: UInt32, height: UInt32) throws(ShimError) {
        var size = winsize(ws_row: UInt16(clamping: height), ws_col: UInt16(clamping: width), ws_xpixel: 0, ws_ypixel: 0)
        guard ioctl(master, UInt(TIOCSWINSZ), &size) == 0 else {
            throw ShimError(.internalError, "resize terminal: \(String(cString: strerror(errno)))")
        }
    }

    /// Stops relaying stdin (CloseIO).
    func closeStdin() { stopping.store(true, ordering: .relaxed) }

    /// Waits up to `seconds` for the output relay to drain after the
    /// process exited.
    func waitOutput(seconds: Double) {
        if outputDone.wait(timeout: .now() + seconds) == .success { outputDone.signal() }
    }

    /// Stops both relays and closes the master.
    func close() {
        let first = closed.withLock { done in defer { done = true }; return !done }
        guard first else { return }
        stopping.store(true, ordering: .relaxed)
        stdinDone.wait()
        outputDone.wait()
        Glibc.close(master)
    }
}
