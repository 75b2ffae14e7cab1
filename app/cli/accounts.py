"""The commands on accounts and indexes: user, token, index, refresh."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.cli.base import CommandError, confirm
from app.core.config import Settings
from app.core.dists import normalize_name
from app.data.db import Database, begin_write
from app.data.models import Index, MirrorPage, Token, User
from app.ops.prepare import find_user
from app.services.indexes import get_index_by_path, resolution_order
from app.services.indexes_config import IndexConfigError, apply_config, create_index, index_config
from app.services.passwords import hash_password
from app.services.releases import InUse, check_deletable, delete_index, delete_owned_indexes


def _read_password(given: str | None, username: str) -> str:
    if given:
        return given
    if os.environ.get("PYSHELF_PASSWORD"):
        return os.environ["PYSHELF_PASSWORD"]
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        if first != getpass.getpass("Again: "):
            raise CommandError("the passwords differ")
        return first
    password = secrets.token_urlsafe(18)
    print(f"Generated password for {username}: {password}")
    return password


def _refuse_if_based_on(session: Session, paths: list[str]) -> None:
    """Refuse to delete indexes that others list as bases (as the API's 409 does)."""
    try:
        check_deletable(session, paths)
    except InUse as exc:
        raise CommandError(str(exc).rstrip(".")) from None


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"expected key=value, got {pair!r}")
        config[key.strip()] = value.strip()
    return config


def cmd_user(settings: Settings, args: argparse.Namespace) -> None:
    """user create|passwd|delete|list."""
    database = Database(settings.database_url)
    if args.action == "delete":
        with database.session() as session:  # read only: no write lock while a person answers
            user = find_user(session, args.name)
            if user is None:
                raise CommandError(f"user {args.name} does not exist")
            owned = [i.path for i in user.indexes]
            _refuse_if_based_on(session, owned)
        what = f" and the indexes {', '.join(owned)} with everything in them" if owned else ""
        confirm(args, f"Delete user {args.name}{what}?")
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            for each in session.scalars(select(User).order_by(User.username)):
                print(f"{each.username}{' (superuser)' if each.is_superuser else ''}")
            return
        user = find_user(session, args.name)
        if args.action == "create":
            if user is not None:
                raise CommandError(f"user {args.name} already exists")
            user = User(
                username=args.name,
                password_hash=hash_password(_read_password(args.password, args.name)),
                email=args.email,
                is_superuser=args.superuser,
            )
            session.add(user)
        elif user is None:
            raise CommandError(f"user {args.name} does not exist")
        elif args.action == "passwd":
            user.password_hash = hash_password(_read_password(args.password, args.name))
        elif args.action == "delete":
            try:
                delete_owned_indexes(session, user)
            except InUse as exc:
                raise CommandError(str(exc).rstrip(".")) from None
            session.delete(user)
        session.commit()
        print(f"user {args.name}: {args.action} done")


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    """token create USER: print a new API token (use it with username __token__)."""
    # Here, not at the top: app.http.auth brings the mirror and its prometheus counters along,
    # which `serve` must not load before it becomes gunicorn's master (app/ops/server.py).
    from app.http.auth import new_token_secret, token_hash

    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        user = find_user(session, args.name)
        if user is None:
            raise CommandError(f"user {args.name} does not exist")
        secret = new_token_secret()
        session.add(
            Token(
                user_id=user.id,
                description=args.description or "",
                secret_sha256=token_hash(secret),
            )
        )
        session.commit()
        print(secret)


def cmd_index(settings: Settings, args: argparse.Namespace) -> None:
    """index create|modify|delete|show|list."""
    database = Database(settings.database_url)
    if args.action == "delete":
        with database.session() as session:  # read only: no write lock while a person answers
            if get_index_by_path(session, args.path) is None:
                raise CommandError(f"index {args.path} does not exist")
            _refuse_if_based_on(session, [args.path])
        confirm(args, f"Delete index {args.path} and every file and page in it?")
    with database.session() as session:
        begin_write(session)
        if args.action == "list":
            for each in session.scalars(select(Index)):
                print(f"{each.path} ({each.type})")
            return
        username, sep, name = args.path.partition("/")
        if not sep:
            raise CommandError(f"expected USER/NAME, got {args.path!r}")
        index = get_index_by_path(session, args.path)
        config = _parse_pairs(args.settings)
        try:
            if args.action == "create":
                owner = find_user(session, username)
                if owner is None:
                    raise CommandError(f"user {username} does not exist")
                index = create_index(session, owner, name, config)
            elif index is None:
                raise CommandError(f"index {args.path} does not exist")
            elif args.action == "modify":
                apply_config(session, index, config)
            elif args.action == "delete":
                try:
                    delete_index(session, index)
                except InUse as exc:
                    raise CommandError(str(exc).rstrip(".")) from None
                session.commit()
                print(f"deleted {args.path}")
                return
        except IndexConfigError as exc:
            raise CommandError(str(exc)) from None
        session.commit()
        print(json.dumps({args.path: index_config(index)}, indent=2))


def cmd_refresh(settings: Settings, args: argparse.Namespace) -> None:
    """refresh USER/INDEX PROJECT: mark cached mirror pages stale so they are fetched again."""
    database = Database(settings.database_url)
    with database.session() as session:
        begin_write(session)
        index = get_index_by_path(session, args.path)
        if index is None:
            raise CommandError(f"index {args.path} does not exist")
        mirrors = [i.id for i in resolution_order(session, index) if i.is_mirror]
        pages = session.scalars(
            select(MirrorPage).where(
                MirrorPage.index_id.in_(mirrors),
                MirrorPage.normalized_name == normalize_name(args.project),
            )
        ).all()
        for page in pages:
            page.checked_at = None
        session.commit()
        print(f"{len(pages)} cached page(s) of {normalize_name(args.project)} marked for refresh")
