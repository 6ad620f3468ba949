// libFuzzer harness for KangarooOCI's LayerReader (tar + gzip/zstd via
// libarchive). Built by fuzz/run-tar.sh together with the reader's sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTarOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    guard let reader = try? LayerReader(bytes: bytes) else { return 0 }
    var entries = 0
    while entries < 100_000 {
        let entry: LayerEntry?
        do { entry = try reader.next() } catch { return 0 }
        guard let entry else { break }
        entries += 1
        // Properties the reader promises for every entry.
        precondition(!entry.path.hasPrefix("/"), "absolute path \(entry.path)")
        precondition(!entry.path.split(separator: "/").contains(".."), "dot-dot in \(entry.path)")
        precondition(entry.mode & ~0o7777 == 0, "mode bits \(entry.mode)")
        if case .hardlink(let target) = entry.kind {
            precondition(!target.isEmpty && !target.hasPrefix("/"), "hardlink target \(target)")
        }
        var checksum: UInt8 = 0
        var end: UInt64 = 0
        while true {
            let block: (offset: UInt64, bytes: UnsafeRawBufferPointer)?
            do { block = try reader.nextDataBlock() } catch { return 0 }
            guard let block else { break }
            precondition(block.offset >= end, "overlapping block")
            end = block.offset + UInt64(block.bytes.count)
            precondition(end <= entry.size, "block past the end of the file")
            for b in block.bytes { checksum &+= b }
        }
        _ = checksum
    }
    return 0
}
