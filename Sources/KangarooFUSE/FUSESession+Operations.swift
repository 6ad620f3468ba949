import SystemPackage

extension FUSESession {
    /// One filesystem operation after INIT. Errors thrown become the reply's errno.
    func perform(
        _ opcode: FUSEOpcode, header: FUSEInHeader, payload: UnsafeRawBufferPointer, body: UnsafeMutableRawBufferPointer
    ) throws(FUSEError) -> Outcome {
        let node = header.nodeID
        switch opcode {
        case .lookup:
            let name = cString(payload, from: 0)
            do throws(FUSEError) {
                let entry = try fileSystem.lookup(parent: node, name: name)
                entry.encode(into: body, at: 0)
            } catch where error.errno == .noSuchFileOrDirectory && fileSystem.negativeLookupTimeout > .zero {
                FUSEEntry.encodeNegative(into: body, at: 0, timeout: fileSystem.negativeLookupTimeout)
            }
            return .ok(FUSEWireSize.entryOut)

        case .forget:
            try need(payload, 8)
            fileSystem.forget(nodeID: node, lookups: payload.get(UInt64.self, at: 0))
            return .none

        case .batchForget:
            try need(payload, FUSEWireSize.batchForgetIn)
            let count = Int(payload.get(UInt32.self, at: 0))
            for index in 0..<count {
                let base = FUSEWireSize.batchForgetIn + index * FUSEWireSize.forgetOne
                guard base + FUSEWireSize.forgetOne <= payload.count else { break }
                fileSystem.forget(nodeID: payload.get(UInt64.self, at: base), lookups: payload.get(UInt64.self, at: base + 8))
            }
            return .none

        case .getattr:
            let attributes = try fileSystem.getattr(nodeID: node)
            let (seconds, nanoseconds) = fileSystem.attributeTimeout.fuseTimeout
            body.put(seconds, at: 0)
            body.put(nanoseconds, at: 8)
            body.put(UInt32(0), at: 12)
            attributes.encode(into: body, at: 16)
            return .ok(FUSEWireSize.attrOut)

        case .readlink:
            let target = try fileSystem.readlink(nodeID: node)
            return .ok(copy(target, into: body))

        case .open:
            try need(payload, 8)
            let flags = payload.get(UInt32.self, at: 0)
            // O_ACCMODE: anything but O_RDONLY writes.
            if flags & 3 != 0 { throw .readOnly }
            let opened = try fileSystem.open(nodeID: node, flags: flags)
            opened.encode(into: body, at: 0)
            return .ok(FUSEWireSize.openOut)

        case .read:
            try need(payload, 24)
            let handle = payload.get(UInt64.self, at: 0)
            let offset = payload.get(UInt64.self, at: 8)
            let size = min(Int(payload.get(UInt32.self, at: 16)), body.count, FUSEProtocol.maxTransfer)
            let target = UnsafeMutableRawBufferPointer(rebasing: body[0..<size])
            let count = try fileSystem.read(nodeID: node, handle: handle, offset: offset, into: target)
            return .ok(max(0, min(count, size)))

        case .release:
            try need(payload, 8)
            fileSystem.release(nodeID: node, handle: payload.get(UInt64.self, at: 0))
            return .ok(0)

        case .opendir:
            let opened = try fileSystem.opendir(nodeID: node)
            opened.encode(into: body, at: 0)
            return .ok(FUSEWireSize.openOut)

        case .readdir, .readdirplus:
            try need(payload, 24)
            let handle = payload.get(UInt64.self, at: 0)
            let offset = payload.get(UInt64.self, at: 8)
            let size = min(Int(payload.get(UInt32.self, at: 16)), body.count)
            var writer = FUSEDirectoryWriter(
                buffer: UnsafeMutableRawBufferPointer(rebasing: body[0..<size]), isPlus: opcode == .readdirplus)
            try fileSystem.readdir(nodeID: node, handle: handle, offset: offset, into: &writer)
            // An empty READDIRPLUS after the first means the kernel has
            // processed every earlier reply of this listing.
            if opcode == .readdirplus, writer.length == 0, offset > 0, let cache = pageCache {
                fileSystem.directoryListed(nodeID: node, cache: cache)
            }
            return .ok(writer.length)

        case .releasedir:
            try need(payload, 8)
            fileSystem.releasedir(nodeID: node, handle: payload.get(UInt64.self, at: 0))
            return .ok(0)

        case .statfs:
            let stats = try fileSystem.statfs(nodeID: node)
            stats.encode(into: body, at: 0)
            return .ok(FUSEWireSize.kstatfs)

        case .getxattr:
            try need(payload, 8)
            let size = Int(payload.get(UInt32.self, at: 0))
            let value = try fileSystem.getxattr(nodeID: node, name: cString(payload, from: 8))
            return try sized(value, requested: size, body: body)

        case .listxattr:
            try need(payload, 8)
            let size = Int(payload.get(UInt32.self, at: 0))
            var list: [UInt8] = []
            for name in try fileSystem.listxattr(nodeID: node) {
                list += name
                list.append(0)
            }
            return try sized(list, requested: size, body: body)

        case .access:
            try need(payload, 4)
            try fileSystem.access(nodeID: node, mask: payload.get(UInt32.self, at: 0))
            return .ok(0)

        case .flush:
            // Nothing to flush on a read-only filesystem: ENOSYS makes the
            // kernel stop sending FLUSH on close (zero-message opens cannot
            // carry FOPEN_NOFLUSH).
            throw .notSupported

        case .fsync, .fsyncdir:
            return .ok(0)

        case .interrupt:
            // Requests run to completion; the kernel copes with late replies.
            return .none

        case .destroy:
            destroyedNow()
            return .ok(0)

        default:
            // STATX, LSEEK, IOCTL, POLL, locks, BMAP, ...: the kernel falls
            // back (or remembers ENOSYS and stops asking).
            return .error(.noFunction)
        }
    }

    private func need(_ payload: UnsafeRawBufferPointer, _ count: Int) throws(FUSEError) {
        if payload.count < count { throw .invalid }
    }

    /// A NUL-terminated name starting at `from`.
    private func cString(_ payload: UnsafeRawBufferPointer, from start: Int) -> [UInt8] {
        guard start < payload.count else { return [] }
        let rest = payload[start...]
        let end = rest.firstIndex(of: 0) ?? payload.count
        return Array(payload[start..<end])
    }

    private func copy(_ bytes: [UInt8], into body: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(bytes.count, body.count)
        bytes.withUnsafeBytes { source in
            if count > 0, let base = source.baseAddress {
                body.baseAddress?.copyMemory(from: base, byteCount: count)
            }
        }
        return count
    }

    /// getxattr/listxattr convention: size 0 asks for the length
    /// (fuse_getxattr_out); a too-small buffer is ERANGE.
    private func sized(_ value: [UInt8], requested size: Int, body: UnsafeMutableRawBufferPointer) throws(FUSEError) -> Outcome {
        if size == 0 {
            body.put(UInt32(value.count), at: 0)
            body.put(UInt32(0), at: 4)
            return .ok(FUSEWireSize.getxattrOut)
        }
        if value.count > size || value.count > body.count { throw .range }
        return .ok(copy(value, into: body))
    }
}
