import NIOCore
import SystemPackage

/// An async sequence of `ByteBuffer`s reading `length` bytes of a file from
/// `offset`, one chunk at a time, for streaming request bodies.
struct FileByteSequence: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: FilePath
    let offset: Int64
    let length: Int64
    var chunkSize = 1 << 20

    struct AsyncIterator: AsyncIteratorProtocol {
        let sequence: FileByteSequence
        var fd: SystemPackage.FileDescriptor?
        var position: Int64
        var done = false

        mutating func next() async throws -> ByteBuffer? {
            if done { return nil }
            let remaining = sequence.offset + sequence.length - position
            if remaining <= 0 {
                close()
                return nil
            }
            if fd == nil { fd = try FileIO.open(sequence.path, .readOnly) }
            guard let fd else { return nil }
            let want = Int(Swift.min(Int64(sequence.chunkSize), remaining))
            var buffer = ByteBufferAllocator().buffer(capacity: want)
            let n = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { raw in
                try fd.read(fromAbsoluteOffset: position, into: UnsafeMutableRawBufferPointer(rebasing: raw[..<want]),
                            retryOnInterrupt: true)
            }
            if n == 0 {
                close()
                throw OCIError(.io, "'\(sequence.path)' ended \(remaining) bytes early while uploading it")
            }
            position += Int64(n)
            return buffer
        }

        mutating func close() {
            done = true
            try? fd?.close()
            fd = nil
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(sequence: self, position: offset)
    }
}
