/// Packs directory entries into a READDIR / READDIRPLUS reply. The
/// filesystem appends entries from the requested offset on until `append`
/// returns false (the reply is full); the entry that did not fit is sent
/// again on the next call, which starts at the last entry's `nextOffset`.
public struct FUSEDirectoryWriter: ~Copyable {
    private let buffer: UnsafeMutableRawBufferPointer
    /// Bytes written so far.
    public private(set) var length = 0
    /// True for READDIRPLUS: each entry should carry its `FUSEEntry`.
    public let isPlus: Bool

    init(buffer: UnsafeMutableRawBufferPointer, isPlus: Bool) {
        self.buffer = buffer
        self.isPlus = isPlus
    }

    /// Appends one entry. `nextOffset` is the cookie the kernel passes back
    /// to continue after this entry (e.g. its index + 1; never 0).
    /// In READDIRPLUS mode `entry` supplies the attributes (each such entry
    /// counts as one lookup the kernel later FORGETs); a nil entry sends
    /// the name without attributes. Returns false, writing nothing, when the
    /// entry does not fit.
    public mutating func append(
        name: some Collection<UInt8>, inode: UInt64, type: FUSEFileType,
        nextOffset: UInt64, entry: FUSEEntry? = nil
    ) -> Bool {
        let header = isPlus ? FUSEWireSize.direntPlus : FUSEWireSize.dirent
        let size = (header + name.count + 7) & ~7
        guard length + size <= buffer.count else { return false }
        var base = length
        if isPlus {
            if let entry {
                entry.encode(into: buffer, at: base)
            } else {
                for offset in stride(from: 0, to: FUSEWireSize.entryOut, by: 8) {
                    buffer.put(UInt64(0), at: base + offset)
                }
            }
            base += FUSEWireSize.entryOut
        }
        buffer.put(inode, at: base)
        buffer.put(nextOffset, at: base + 8)
        buffer.put(UInt32(name.count), at: base + 16)
        buffer.put(type.direntType, at: base + 20)
        var position = base + FUSEWireSize.dirent
        for byte in name {
            buffer[position] = byte
            position += 1
        }
        while position < length + size {
            buffer[position] = 0
            position += 1
        }
        length += size
        return true
    }
}
