#if canImport(Glibc)
import Glibc
#endif

/// Owns C memory handed to the container init (strings, arrays). Freed when
/// the arena goes away, which is after the clone: the child has its own copy.
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    deinit { for b in blocks { free(b) } }

    func string(_ s: String) -> UnsafeMutablePointer<CChar> {
        let p = strdup(s)!
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }

    func optionalString(_ s: String?) -> UnsafeMutablePointer<CChar>? {
        s.map(string)
    }

    /// A NULL-terminated char* array.
    func stringArray(_ list: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: list.count + 1)
        for (i, s) in list.enumerated() { p[i] = string(s) }
        p[list.count] = nil
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }

    /// A `const char *const *` view of the same.
    func constStringArray(_ list: [String]) -> UnsafePointer<UnsafePointer<CChar>?> {
        UnsafeRawPointer(stringArray(list)).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
    }

    func array<T>(_ items: [T]) -> UnsafeMutablePointer<T>? {
        if items.isEmpty { return nil }
        let p = UnsafeMutablePointer<T>.allocate(capacity: items.count)
        p.initialize(from: items, count: items.count)
        blocks.append(UnsafeMutableRawPointer(p))
        return p
    }

    func bytes(_ items: [UInt8]) -> UnsafeMutableRawPointer? {
        if items.isEmpty { return nil }
        let p = malloc(items.count)!
        items.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        blocks.append(p)
        return p
    }
}
