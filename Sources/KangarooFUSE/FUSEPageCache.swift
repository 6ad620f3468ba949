#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Pushes file contents into the kernel's page cache of a FUSE mount
/// (FUSE_NOTIFY_STORE), so later reads of them cost no request. Only for
/// inodes the kernel holds (known from a LOOKUP or READDIRPLUS reply it has
/// processed); for others the kernel refuses and `store` returns false.
public struct FUSEPageCache: Sendable {
    let channel: FUSENotifyChannel

    /// FUSE_NOTIFY_STORE in the out header's error field.
    static let notifyStore: Int32 = 4
    /// fuse_out_header (16) + fuse_notify_store_out (24).
    static let headerSize = 40

    /// Stores `bytes` at `offset` of `nodeID`'s contents. Pages become
    /// readable when filled completely or up to the end of the file.
    @discardableResult
    public func store(nodeID: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0, bytes.count <= FUSEProtocol.maxTransfer else { return false }
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header.withUnsafeMutableBytes { h in
            h.storeBytes(of: UInt32(Self.headerSize + bytes.count).littleEndian, toByteOffset: 0, as: UInt32.self)
            h.storeBytes(of: Self.notifyStore.littleEndian, toByteOffset: 4, as: Int32.self)
            // unique 0 (bytes 8..<16): a notification.
            h.storeBytes(of: nodeID.littleEndian, toByteOffset: 16, as: UInt64.self)
            h.storeBytes(of: offset.littleEndian, toByteOffset: 24, as: UInt64.self)
            h.storeBytes(of: UInt32(bytes.count).littleEndian, toByteOffset: 32, as: UInt32.self)
        }
        return header.withUnsafeBytes { h in
            var vectors = [
                iovec(iov_base: UnsafeMutableRawPointer(mutating: h.baseAddress), iov_len: h.count),
                iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count),
            ]
            return channel.write(&vectors, count: Self.headerSize + bytes.count)
        }
    }
}

/// The /dev/fuse descriptor notifications go through. Writes and close
/// are serialised, so a push racing with the end of the mount never
/// writes to a descriptor number reused for something else.
final class FUSENotifyChannel: Sendable {
    private let device = Mutex<Int32>(-1)

    func open(_ fd: Int32) { device.withLock { $0 = fd } }

    func close() {
        device.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    var isOpen: Bool { device.withLock { $0 >= 0 } }

    func write(_ vectors: inout [iovec], count: Int) -> Bool {
        device.withLock { fd in
            guard fd >= 0 else { return false }
            return retryingEINTR { writev(fd, &vectors, Int32(vectors.count)) } == count
        }
    }
}
