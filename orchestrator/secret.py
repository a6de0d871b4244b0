"""`python -m lnsub.orchestrator.secret NAME`: print an AWS Secrets Manager secret (the head's MLflow database URI).

The cluster configs read the database URI this way on the head, through its instance profile, so that no
password is written in a config, a file mount or a command line that `ps` shows to other users.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lnsub.orchestrator.secret SECRET_ID", file=sys.stderr)
        return 2
    import boto3

    sys.stdout.write(boto3.client("secretsmanager").get_secret_value(SecretId=argv[0])["SecretString"].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
