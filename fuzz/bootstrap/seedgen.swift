// Writes small seed bootstraps for the fuzzer with the real writer.
import Glibc

@main struct SeedGen {
    static func main() throws {
        let out = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "corpus"
        var seeds: [[UInt8]] = []

        // 1. Empty root.
        seeds.append(try BootstrapWriter.write(root: TreeNode(kind: .directory, mode: 0o755), chunkSizeBits: 16, devices: [],
                                               extensionBytes: KangarooExtension(chunkSize: 1 << 16, blobs: [], chunks: [], prefetch: []).encode()))

        // 2. Every kind, one blob with three chunks.
        let root = TreeNode(kind: .directory, mode: 0o755, mtimeSeconds: 1000)
        let etc = TreeNode(kind: .directory, mode: 0o755, xattrs: ["user.x": [1, 2, 3], "trusted.overlay.opaque": [0x79]])
        root.children["etc"] = etc
        let file = TreeNode(kind: .regular, mode: 0o644, uid: 1000, gid: 1000, size: 150_000,
                            chunks: [ChunkLocation(blob: 0, blockAddress: 0), nil, ChunkLocation(blob: 0, blockAddress: 16)])
        etc.children["passwd"] = file
        etc.children["hard"] = file
        etc.children["link"] = TreeNode(kind: .symlink(target: "passwd"), mode: 0o777)
        etc.children["long"] = TreeNode(kind: .symlink(target: String(repeating: "a/", count: 1000)), mode: 0o777)
        root.children["null"] = TreeNode(kind: .characterDevice(major: 1, minor: 3), mode: 0o666)
        root.children["sda"] = TreeNode(kind: .blockDevice(major: 8, minor: 300), mode: 0o660)
        root.children["fifo"] = TreeNode(kind: .fifo, mode: 0o600)
        root.children["sock"] = TreeNode(kind: .socket, mode: 0o600)
        root.children["empty"] = TreeNode(kind: .regular, mode: 0o600)
        let many = TreeNode(kind: .directory, mode: 0o700)
        for i in 0..<300 { many.children["entry-number-\(i)"] = TreeNode(kind: .fifo, mode: 0o600) }
        root.children["many"] = many
        let digest = [UInt8](repeating: 0xAB, count: 32)
        let blob = BlobInfo(digest: digest, compressedSize: 70_000, uncompressedSize: 32 * 4096, compression: .zstd)
        let chunks = [
            ChunkInfo(blob: 0, blockAddress: 0, uncompressedSize: 65_536, compressedSize: 40_000, compressedOffset: 0, compression: .zstd, digest: digest),
            ChunkInfo(blob: 0, blockAddress: 16, uncompressedSize: 18_928, compressedSize: 18_928, compressedOffset: 40_000, compression: .none, digest: digest),
        ]
        let ext = KangarooExtension(chunkSize: 1 << 16, blobs: [blob], chunks: chunks, prefetch: ["etc/passwd", "null"])
        seeds.append(try BootstrapWriter.write(root: root, chunkSizeBits: 16, devices: [.init(tag: blob.digestHex, blocks: 32)],
                                               extensionBytes: ext.encode()))

        // 3. Deep directories.
        let deep = TreeNode(kind: .directory, mode: 0o755)
        var cur = deep
        for i in 0..<20 {
            let next = TreeNode(kind: .directory, mode: 0o755)
            cur.children["d\(i)"] = next
            cur = next
        }
        seeds.append(try BootstrapWriter.write(root: deep, chunkSizeBits: 20, devices: [],
                                               extensionBytes: KangarooExtension(chunkSize: 1 << 20, blobs: [], chunks: [], prefetch: ["d0"]).encode()))

        for (i, seed) in seeds.enumerated() {
            let path = "\(out)/seed-\(i).bootstrap"
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { fatalError("open \(path)") }
            _ = seed.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            print("\(path): \(seed.count) bytes")
        }
    }
}
