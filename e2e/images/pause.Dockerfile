# The pod sandbox ("pause") image: Kubernetes' own build/pause/linux/pause.c, compiled statically here.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
