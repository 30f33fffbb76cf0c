output "address" {
  description = "Hostname of the DB instance."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the DB instance."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Name of the application database."
  value       = aws_db_instance.this.db_name
}

output "master_password_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the master password."
  value       = aws_secretsmanager_secret.master_password.arn
}

output "database_url" {
  description = "Connection URL for the application (TLS required: sslmode=require)."
  sensitive   = true
  value = format(
    "postgres://%s:%s@%s:%d/%s?sslmode=require",
    var.username,
    urlencode(aws_secretsmanager_secret_version.master_password.secret_string),
    aws_db_instance.this.address,
    aws_db_instance.this.port,
    aws_db_instance.this.db_name,
  )
}

output "instance_id" {
  description = "RDS instance identifier (the DBInstanceIdentifier of its CloudWatch metrics)."
  value       = aws_db_instance.this.identifier
}
