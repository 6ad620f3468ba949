import CLZ4
import CZstd

/// Chunk compression with libzstd and liblz4 (raw LZ4 block format).
enum ChunkCodec {
    /// Compresses `input`; returns nil when the result would not be smaller
    /// (the chunk is then stored raw).
    static func compress(_ input: UnsafeRawBufferPointer, with compression: ChunkCompression, level: Int32) throws(ImageError) -> [UInt8]? {
        switch compression {
        case .none:
            return nil
        case .zstd:
            let bound = ZSTD_compressBound(input.count)
            var out = [UInt8](repeating: 0, count: bound)
            let n = out.withUnsafeMutableBytes { dst in
                ZSTD_compress(dst.baseAddress, bound, input.baseAddress, input.count, level)
            }
            if ZSTD_isError(n) != 0 {
                throw ImageError(.compression, "zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))")
            }
            guard n < input.count else { return nil }
            out.removeSubrange(n...)
            return out
        case .lz4:
            let bound = Int(LZ4_compressBound(Int32(input.count)))
            var out = [UInt8](repeating: 0, count: bound)
            let n = out.withUnsafeMutableBytes { dst in
                input.withMemoryRebound(to: CChar.self) { src in
                    dst.withMemoryRebound(to: CChar.self) { d in
                        level > 0
                            ? LZ4_compress_HC(src.baseAddress, d.baseAddress, Int32(input.count), Int32(bound), level)
                            : LZ4_compress_default(src.baseAddress, d.baseAddress, Int32(input.count), Int32(bound))
                    }
                }
            }
            guard n > 0 else { throw ImageError(.compression, "lz4 compression failed") }
            guard Int(n) < input.count else { return nil }
            out.removeSubrange(Int(n)...)
            return out
        }
    }

    /// Decompresses a chunk to exactly `size` bytes.
    static func decompress(_ input: [UInt8], compression: ChunkCompression, size: Int) throws(ImageError) -> [UInt8] {
        switch compression {
        case .none:
            guard input.count == size else { throw ImageError(.digestMismatch, "raw chunk has \(input.count) bytes, expected \(size)") }
            return input
        case .zstd:
            var out = [UInt8](repeating: 0, count: size)
            let n = out.withUnsafeMutableBytes { dst in
                input.withUnsafeBytes { src in ZSTD_decompress(dst.baseAddress, size, src.baseAddress, src.count) }
            }
            if ZSTD_isError(n) != 0 {
                throw ImageError(.compression, "zstd decompression failed: \(String(cString: ZSTD_getErrorName(n)))")
            }
            guard n == size else { throw ImageError(.compression, "zstd chunk decompressed to \(n) bytes, expected \(size)") }
            return out
        case .lz4:
            var out = [UInt8](repeating: 0, count: size)
            let n = out.withUnsafeMutableBytes { dst in
                input.withUnsafeBytes { src in
                    LZ4_decompress_safe(src.baseAddress?.assumingMemoryBound(to: CChar.self), dst.baseAddress?.assumingMemoryBound(to: CChar.self),
                                        Int32(src.count), Int32(size))
                }
            }
            guard n == Int32(size) else { throw ImageError(.compression, "lz4 chunk decompressed to \(n) bytes, expected \(size)") }
            return out
        }
    }
}
