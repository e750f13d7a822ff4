.PHONY: run test lint bench
run:
	./dev run
test:
	./dev test
lint:
	./dev lint
bench:
	./dev bench
