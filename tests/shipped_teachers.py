"""The train-teacher commands of jkt_lab/teachers/remake.sh, parsed (shared by tests that check
that an experiment asks for exactly the shipped teachers' configs)."""
import shlex

from jkt_lab import cli, pretrained


def remake_commands():
    """The train-teacher commands of jkt_lab/teachers/remake.sh, as parsed Configs by --ship name."""
    text = (pretrained.TEACHERS_DIR / "remake.sh").read_text().replace("\\\n", " ")
    common = shlex.split(text.split("common=(", 1)[1].split(")", 1)[0])
    out = {}
    for line in text.splitlines():
        if line.startswith("$JKT train-teacher"):
            argv = []
            for token in shlex.split(line)[1:]:
                argv += common if token == "${common[@]}" else [token]
            args = cli.build_parser().parse_args(argv)
            out[args.ship] = cli._config_from_args(args)
    return out
