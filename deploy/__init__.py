"""Local deployment: the dev stack behind `make up` and the code generator behind `make proto`."""
