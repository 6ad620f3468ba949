import Foundation
import Testing
@testable import KangarooImage

/// Parses and fully walks a bootstrap; errors are fine, traps are not.
func exercise(_ bytes: [UInt8]) -> Bool {
    do {
        let b = try Bootstrap(bytes: bytes)
        try b.walk { (_, inode) throws(ImageError) in
            _ = try? b.xattrs(inode)
            switch inode.kind {
            case .directory: _ = try? b.readdir(inode)
            case .symlink: _ = try? b.readlink(inode)
            case .regular: _ = try? b.chunkMap(inode)
            default: break
            }
        }
        _ = try? b.summary()
        return true
    } catch {
        return false
    }
}

@Suite struct CorruptionTests {
    static func sample() throws -> [UInt8] {
        let dir = try TempDir()
        return try build([RoundTripTests.everyKind(huge: false)], in: dir).result.bootstrap
    }

    @Test func pristineBootstrapParses() throws {
        #expect(exercise(try Self.sample()))
    }

    @Test func truncationsNeverCrash() throws {
        let bytes = try Self.sample()
        var accepted = 0
        for length in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 300)) {
            if exercise(Array(bytes[0..<length])) { accepted += 1 }
        }
        // The extension lives at the end: every truncation must be rejected.
        #expect(accepted == 0)
    }

    @Test func randomByteFlipsNeverCrash() throws {
        let bytes = try Self.sample()
        var rng = SystemRandomNumberGenerator()
        var rejected = 0
        for _ in 0..<400 {
            var copy = bytes
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                // Bias towards the metadata at the start of the image.
                let i = Bool.random(using: &rng) ? Int.random(in: 0..<min(copy.count, 8192), using: &rng) : Int.random(in: 0..<copy.count, using: &rng)
                copy[i] = UInt8.random(in: 0...255, using: &rng)
            }
            if !exercise(copy) { rejected += 1 }
        }
        #expect(rejected > 0)
    }

    @Test(arguments: [
        (1024, "EROFS magic"), (0, "KGRO"), (1024 + 12, "block size"),
    ])
    func specificCorruptionsAreNamed(offset: Int, message: String) throws {
        var bytes = try Self.sample()
        bytes[offset] ^= 0xFF
        let result = Result { () throws(ImageError) in try Bootstrap(bytes: bytes) }
        guard case .failure(let error) = result else { Issue.record("corruption at \(offset) was accepted"); return }
        #expect(error.message.contains(message), "\(error.message)")
    }

    @Test func directoryCycleIsRejected() throws {
        let dir = try TempDir()
        let l = MemoryLayer()
        l.dir("a")
        l.dir("a/b")
        let built = try build([l], in: dir)
        var bytes = built.result.bootstrap
        let b = built.bootstrap
        let aNid = try b.lookup(path: "a").nid
        let bInode = try b.lookup(path: "a/b")
        // Point a/b's ".." is fine; instead make a/b contain an entry pointing to a: patch "b"'s dirent in a to a's own nid is a cycle via a/b == a.
        let aInode = try b.lookup(path: "a")
        let entries = try b.readdir(aInode)
        let data = try b.flatData(aInode)
        // Find the dirent named "b" and rewrite its nid to a's nid inside the bootstrap bytes.
        guard let idx = entries.firstIndex(where: { $0.name == "b" }) else { Issue.record("no b"); return }
        let pos = bytes.indices.first { i in
            i + data.count <= bytes.count && Array(bytes[i..<(i + data.count)]) == data
        }
        guard let pos else { Issue.record("dir data not found"); return }
        bytes.putU64(aNid, at: pos + idx * 12)
        _ = bInode
        let patched = try Bootstrap(bytes: bytes)
        #expect(throws: ImageError.self) { try patched.walk { _, _ in } }
    }
}
