"""The toy-size run every training test starts from (a few seconds on one CPU core)."""

TINY = dict(dataset="shapes", n_train=300, n_test=100, teacher="tiny", teacher_width=8, teacher_epochs=1,
            student="tiny", student_width=4, per_class=5, steps=6, batch_size=32)
