from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo user (demo / demo) and an admin (admin / admin) if missing."

    def handle(self, *args, **options):
        User = get_user_model()
        for username, staff in (("demo", False), ("admin", True)):
            if User.objects.filter(username=username).exists():
                continue
            user = User(username=username, is_staff=staff, is_superuser=staff)
            user.set_password(username)
            user.save()
            self.stdout.write(f"Created user {username} (password {username})")
