import Foundation
import KangarooOCI
import Testing
@testable import KangarooImage

/// A layer described compactly: "d:path", "f:path=content", "l:path>target", "h:path>target", "w:path" (whiteout), "o:dir" (opaque).
func layer(_ spec: [String]) -> MemoryLayer {
    let l = MemoryLayer()
    for item in spec {
        let kind = item.prefix(1)
        let rest = String(item.dropFirst(2))
        switch kind {
        case "d": l.dir(rest)
        case "f":
            let parts = rest.split(separator: "=", maxSplits: 1).map(String.init)
            l.file(parts[0], Array((parts.count > 1 ? parts[1] : "").utf8))
        case "l":
            let parts = rest.split(separator: ">").map(String.init)
            l.add(parts[0], .symlink(target: parts[1]))
        case "h":
            let parts = rest.split(separator: ">").map(String.init)
            l.add(parts[0], .hardlink(target: parts[1]))
        case "w":
            let path = rest.split(separator: "/").dropLast().joined(separator: "/")
            let name = rest.split(separator: "/").last.map(String.init) ?? ""
            l.file((path.isEmpty ? "" : path + "/") + ".wh." + name, [])
        case "o": l.file(rest + "/.wh..wh..opq", [])
        default: fatalError("bad spec \(item)")
        }
    }
    return l
}

/// Listing "path" for dirs, "path=content" for files, "path>target" for symlinks.
func listing(_ built: Built) throws -> [String] {
    var out: [String] = []
    try built.bootstrap.walk { (path, inode) throws(ImageError) in
        guard !path.isEmpty else { return }
        switch inode.kind {
        case .directory: out.append(path + "/")
        case .symlink: out.append(path + ">" + (try built.bootstrap.readlink(inode)))
        default:
            let data = (try? built.bootstrap.readFile(inode, offset: 0, length: Int(inode.size), source: built.source)) ?? []
            out.append(path + "=" + String(decoding: data, as: UTF8.self))
        }
    }
    return out.sorted()
}

struct MergeCase: CustomTestStringConvertible, Sendable {
    var name: String
    var layers: [[String]]
    var expected: [String]
    var testDescription: String { name }
}

@Suite struct MergeTests {
    static let cases: [MergeCase] = [
        MergeCase(name: "whiteout deletes lower file", layers: [["f:a=1", "f:b=2"], ["w:a"]], expected: ["b=2"]),
        MergeCase(name: "whiteout deletes lower directory tree", layers: [["f:d/x=1", "f:d/y/z=2"], ["w:d"]], expected: []),
        MergeCase(name: "whiteout of missing name is ignored", layers: [["f:a=1"], ["w:nothing"]], expected: ["a=1"]),
        MergeCase(name: "opaque hides lower children, keeps same-layer ones", layers: [["f:d/old=1", "f:d/sub/deep=2"], ["f:d/new=3", "o:d", "f:d/after=4"]],
                  expected: ["d/", "d/after=4", "d/new=3"]),
        MergeCase(name: "opaque keeps same-layer nested files", layers: [["f:d/sub/old=1"], ["f:d/sub/new=2", "o:d"]],
                  expected: ["d/", "d/sub/", "d/sub/new=2"]),
        MergeCase(name: "file replaced by directory", layers: [["f:p=file"], ["d:p", "f:p/child=c"]], expected: ["p/", "p/child=c"]),
        MergeCase(name: "directory replaced by file and back", layers: [["f:p/child=c"], ["f:p=file"], ["d:p", "f:p/other=o"]],
                  expected: ["p/", "p/other=o"]),
        MergeCase(name: "upper file overrides lower", layers: [["f:a=lower"], ["f:a=upper"]], expected: ["a=upper"]),
        MergeCase(name: "symlink replaced by file", layers: [["l:a>b"], ["f:a=x"]], expected: ["a=x"]),
        MergeCase(name: "hardlink to earlier layer file", layers: [["f:orig=content"], ["h:copy>orig"]], expected: ["copy=content", "orig=content"]),
        MergeCase(name: "hardlink survives deleting the original", layers: [["f:orig=content", "h:copy>orig"], ["w:orig"]], expected: ["copy=content"]),
        MergeCase(name: "directory metadata update keeps children", layers: [["f:d/a=1"], ["d:d"]], expected: ["d/", "d/a=1"]),
        MergeCase(name: "nested opaque directories in one layer", layers: [["f:a/b/old=1", "f:a/keep=2"], ["o:a/b", "o:a", "f:a/b/new=3"]],
                  expected: ["a/", "a/b/", "a/b/new=3"]),
        MergeCase(name: "whiteout below a missing directory creates nothing", layers: [["f:x=1"], ["w:ghost/dir/y"]], expected: ["x=1"]),
        MergeCase(name: "whiteout then recreate in upper layer", layers: [["f:a=1"], ["w:a"], ["f:a=2"]], expected: ["a=2"]),
    ]

    @Test(arguments: cases)
    func merge(_ c: MergeCase) throws {
        let dir = try TempDir()
        let built = try build(c.layers.map(layer), in: dir)
        var expected = c.expected
        for entry in c.expected {
            // Implicit parents of expected files.
            var parts = entry.split(separator: "=").first!.split(separator: ">").first!.split(separator: "/").dropLast()
            while !parts.isEmpty {
                let p = parts.joined(separator: "/") + "/"
                if !expected.contains(p) { expected.append(p) }
                parts = parts.dropLast()
            }
        }
        #expect(try listing(built) == expected.sorted())
    }

    static let hostile: [MergeCase] = [
        MergeCase(name: "file replaced by implicit directory is rejected", layers: [["f:p=file"], ["f:p/child=c"]], expected: ["parent 'p' is not a directory"]),
        MergeCase(name: "file through a symlink parent", layers: [["l:etc>/tmp"], ["f:etc/passwd=x"]], expected: ["parent 'etc' is a symlink"]),
        MergeCase(name: "file through a symlink in the same layer", layers: [["l:s>.", "f:s/x=1"]], expected: ["parent 's' is a symlink"]),
        MergeCase(name: "file below a regular file", layers: [["f:a=1", "f:a/b=2"]], expected: ["parent 'a' is not a directory"]),
        MergeCase(name: "dangling hardlink", layers: [["h:x>missing"]], expected: ["does not exist"]),
        MergeCase(name: "hardlink to a whited-out file", layers: [["f:a=1"], ["w:a", "h:b>a"]], expected: ["does not exist"]),
        MergeCase(name: "hardlink to a directory", layers: [["d:d", "h:x>d"]], expected: ["is a directory"]),
        MergeCase(name: "hardlink through a symlink", layers: [["d:real", "f:real/f=1", "l:s>real", "h:x>s/f"]], expected: ["below a non-directory"]),
    ]

    @Test(arguments: hostile)
    func hostileEntriesAreRejected(_ c: MergeCase) throws {
        let dir = try TempDir()
        do {
            _ = try build(c.layers.map(layer), in: dir)
            Issue.record("expected an error")
        } catch let error as ImageError {
            #expect(error.code == .hostileEntry)
            #expect(error.message.contains(c.expected[0]), "\(error.message)")
            #expect(error.message.contains("layer "))
        }
    }
}
