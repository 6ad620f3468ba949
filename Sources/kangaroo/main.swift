print("kangaroo")
