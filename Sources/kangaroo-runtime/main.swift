print("kangaroo-runtime: not built yet")
